#!/usr/bin/env python3
"""A real Xvfb whose socket file's name is away at the moment it reports its number, as when
another supervisor judges a dead server's file on that number (host.sockets.unlink_if_same
renames the name aside, then links back a file that is not the dead one's).

Given xsupervise's argv for a server (``-displayfd FD`` among it), it runs Xvfb with its own
pipe, renames /tmp/.X11-unix/X<n> aside once Xvfb has told its number, reports the number
on FD, and links the name back $ASIDE_X_SECONDS (default 0.1) later, or at its SIGTERM."""

import os
import signal
import sys
import time

args = sys.argv[1:]
at = args.index("-displayfd")
report_fd = int(args[at + 1])
read_end, write_end = os.pipe()
os.set_inheritable(write_end, True)
server_args = [*args[:at], "-displayfd", str(write_end), *args[at + 2 :]]
pid = os.fork()
if pid == 0:
    os.close(read_end)
    os.close(report_fd)
    os.execvp("Xvfb", ["Xvfb", *server_args])
os.close(write_end)
number = os.read(read_end, 16).decode().strip()
path = f"/tmp/.X11-unix/X{number}"
aside = f"/tmp/.X11-unix/.aside-{os.getpid()}"
os.rename(path, aside)


def put_back(*_):
    if os.path.lexists(aside):
        os.link(aside, path)
        os.unlink(aside)


signal.signal(signal.SIGTERM, lambda *_: (put_back(), sys.exit(0)))
os.write(report_fd, f"{number}\n".encode())
# The other supervisor's judging, stretched so that a verify lands in it.
time.sleep(float(os.environ.get("ASIDE_X_SECONDS", "0.1")))
put_back()
os.waitpid(pid, 0)
