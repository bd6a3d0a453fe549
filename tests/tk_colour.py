"""A borderless window of one colour that fills the screen and prints each key it gets.

``python tk_colour.py '#RRGGBB' [FILE]``: prints "ready" once mapped and focused, then one
keysym a line (to FILE when given). The view tests look for its colour in the browser, and
for the keys typed there.
"""

import sys
import tkinter

out = open(sys.argv[2], "a") if len(sys.argv) > 2 else sys.stdout  # noqa: SIM115
root = tkinter.Tk()
root.overrideredirect(True)  # no window manager: nothing to decorate it anyway
width, height = root.winfo_screenwidth(), root.winfo_screenheight()
root.geometry(f"{width}x{height}+0+0")
root.configure(background=sys.argv[1], cursor="none")
root.bind("<Key>", lambda event: print(event.keysym, file=out, flush=True))


def ready() -> None:
    root.focus_force()
    print("ready", file=out, flush=True)


root.bind("<Map>", lambda _event: root.after_idle(ready))  # focus once mapped
root.mainloop()
