#!/usr/bin/env python3
"""Fake X servers that explain their failure, or leave processes behind. Mode: last argument.

It accepts the argv xsupervise gives a real server (``-displayfd FD`` among it) and then:
  fatal        prints an (EE) line, Xvfb's usage and its "Fatal server error:" block; exits 1
  ee           prints one (EE) line and no fatal block; exits 1
  daemon=N     forks a child that leaves the session (setsid) and listens on
               /tmp/.X11-unix/XN (removing it on SIGTERM), writes N, and hangs: a server
               that daemonizes
  background   forks a helper that leaves the session (setsid) and runs `sleep 300`, then
               becomes a real Xvfb with the same arguments
  doublefork   the same, but the helper is double-forked (setsid, fork, the middle one
               exits) before the server becomes Xvfb: an orphan before it is ready
  launcher=exit  a launcher (vncserver's shape): starts a real Xvfb in the background (setsid,
               its own -displayfd pipe), relays the number it writes, then exits 0
  launcher=stay  the same, but stays (hangs) after relaying the number
If $FAKE_X_REPORT names a file, it writes "pid=...", "daemon=...", "helper=..." lines there.
"""

import os
import signal
import socket
import sys

args = sys.argv[1:]
fd = int(args[args.index("-displayfd") + 1])
mode = args[-1]
report_path = os.environ.get("FAKE_X_REPORT")


def report(**facts):
    if report_path:
        with open(report_path, "a") as stream:
            for key, value in facts.items():
                stream.write(f"{key}={value}\n")


def host_pid(pid=None):
    """``pid`` (ours if None) as the test sees it: /proc is the host's, also inside a PID
    namespace, where os.getpid() and fork() give the namespace's numbers."""
    if pid is None:
        return int(os.readlink("/proc/self"))
    ours = os.readlink("/proc/self/ns/pid")
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/status") as stream:
                nspid = next(line for line in stream if line.startswith("NSpid:")).split()
            if int(nspid[-1]) == int(pid) and os.readlink(f"/proc/{name}/ns/pid") == ours:
                return int(name)
        except (OSError, ValueError, StopIteration):
            continue
    return pid


def hang():
    while True:
        signal.pause()


report(pid=host_pid())
if mode == "fatal":
    err = sys.stderr
    err.write("(EE) fake: open /dev/dri/card0: No such file or directory\n")
    err.write("use: X [:<display>] [option]\n-a #  default pointer acceleration (factor)\n")
    err.write("(EE) \nFatal server error:\n(EE) fake: no screens found(EE) \n(EE) \n")
    err.write("Please consult the The X.Org Foundation support \n\t at http://wiki.x.org\n")
    err.write(" for help. \n(EE) Please also check the log file for additional information.\n")
    err.write("(EE) \n(EE) Server terminated with error (1). Closing log file.\n")
    sys.exit(1)
elif mode == "ee":
    print("(EE) fake: could not connect to wayland server", file=sys.stderr, flush=True)
    print("bye", file=sys.stderr, flush=True)
    sys.exit(1)
elif mode.startswith("daemon="):
    number = mode.split("=")[1]
    path = f"/tmp/.X11-unix/X{number}"
    ready_read, ready_write = os.pipe()
    daemon = os.fork()
    if daemon == 0:
        os.close(fd)
        os.close(ready_read)
        os.setsid()
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(4)

        def leave(signum, frame):
            os.unlink(path)
            os._exit(0)

        signal.signal(signal.SIGTERM, leave)
        os.write(ready_write, b"x")
        hang()
    os.close(ready_write)
    os.read(ready_read, 1)  # it listens
    report(daemon=host_pid(daemon))
    os.write(fd, f"{number}\n".encode())
    hang()
elif mode == "background":
    helper = os.fork()
    if helper == 0:
        os.close(fd)
        os.setsid()
        os.execvp("sleep", ["sleep", "300"])
    report(helper=host_pid(helper))
    os.execvp("Xvfb", ["Xvfb", *args[:-1]])
elif mode == "doublefork":
    helper_pipe_read, helper_pipe_write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(fd)
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            os.execvp("sleep", ["sleep", "300"])
        os.write(helper_pipe_write, str(grandchild).encode())
        os._exit(0)
    os.close(helper_pipe_write)
    report(helper=host_pid(os.read(helper_pipe_read, 32).decode()))
    os.waitpid(child, 0)  # the middle one is gone: its child is an orphan now
    os.execvp("Xvfb", ["Xvfb", *args[:-1]])
elif mode.startswith("launcher="):
    relay_read, relay_write = os.pipe()
    server = os.fork()
    if server == 0:
        os.close(fd)
        os.close(relay_read)
        os.setsid()
        argv = list(args[:-1])
        argv[argv.index("-displayfd") + 1] = str(relay_write)
        os.set_inheritable(relay_write, True)
        os.execvp("Xvfb", ["Xvfb", *argv])
    os.close(relay_write)
    report(server=host_pid(server))
    number = b""
    while not number.endswith(b"\n"):  # the background server's number, once it is ready
        chunk = os.read(relay_read, 32)
        if not chunk:
            sys.exit(f"fake_x_shapes: the background Xvfb wrote {number!r} and closed")
        number += chunk
    os.write(fd, number)
    if mode == "launcher=exit":
        sys.exit(0)
    hang()
else:
    sys.exit(f"fake_x_shapes: unknown mode {mode}")
