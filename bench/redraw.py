#!/usr/bin/env python3
"""A full-screen window that redraws itself as fast as it can (for bench/view.py).

    python bench/redraw.py flat|noise

flat: the whole window alternates between two flat colours; noise: between two images of
random pixels (what a VNC encoder cannot compress). The pixel at a quarter of the width and
height (away from the pointer, in the middle) differs between the two frames either way, so
a browser can count frames by sampling it. Prints "ready" once mapped, then "frames N"
(drawn so far) every second.
"""

import os
import sys
import tkinter

COLOURS = ("#ff0000", "#0000ff")
root = tkinter.Tk()
root.overrideredirect(True)
width, height = root.winfo_screenwidth(), root.winfo_screenheight()
root.geometry(f"{width}x{height}+0+0")
canvas = tkinter.Canvas(root, width=width, height=height, highlightthickness=0, bd=0, cursor="none")
canvas.pack()
frames = []
if sys.argv[1] == "noise":
    for colour in (b"\xff\x00\x00", b"\x00\x00\xff"):
        pixels = bytearray(os.urandom(width * height * 3))
        row = width * 3
        for y in range(height // 4 - 20, height // 4 + 20):  # a block of the colour there
            start = y * row + (width // 4 - 20) * 3
            pixels[start : start + 40 * 3] = colour * 40
        header = f"P6 {width} {height} 255\n".encode()
        frames.append(tkinter.PhotoImage(data=header + bytes(pixels), format="ppm"))
    item = canvas.create_image(0, 0, anchor="nw", image=frames[0])
else:
    item = canvas.create_rectangle(0, 0, width, height, fill=COLOURS[0], width=0)
count = 0


def redraw() -> None:
    global count
    count += 1
    if frames:
        canvas.itemconfigure(item, image=frames[count % 2])
    else:
        canvas.itemconfigure(item, fill=COLOURS[count % 2])
    root.update_idletasks()
    root.after(1, redraw)


def report() -> None:
    print(f"frames {count}", flush=True)  # the app's own rate, for comparison
    root.after(1000, report)


def mapped(event: tkinter.Event) -> None:
    if event.widget is root:  # (the canvas's Map comes through root's bindings too)
        print("ready", flush=True)


root.bind("<Map>", mapped)
root.after(1000, report)
root.after(1, redraw)
root.mainloop()
