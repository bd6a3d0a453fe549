#!/usr/bin/env python3
"""A misbehaving X server, for fault injection. Its mode is its last argument.

It accepts the argv xsupervise gives a real server (``-displayfd FD`` among it) and then:
  never        never writes a display number
  exit         prints a complaint and exits 1 at once
  exit-later   exits 1 after 0.3 s without writing a number
  garbage      writes "hello" instead of a number
  partial      writes "12" and never the newline
  close        closes the fd without writing
  number=N     writes N (a display it does not serve)
  ignore-term  ignores SIGTERM and never writes
  grandchild   starts a grandchild (same process group), then never writes
  slow=S       waits S seconds, then becomes a real Xvfb with the same arguments
  wrapper      a script's shape: runs the real Xvfb as its child and waits for it
  background   starts a setsid child that outlives it (a daemon), then never writes
  double-fork  daemonizes (fork, setsid, fork); the daemon becomes a real Xvfb and serves
  listen-stuck makes its display sockets (file and abstract) on a free number, as Xvfb does
               long before it writes its number, then ignores SIGTERM and never writes
  mute         makes its display sockets, writes its number, and never answers a client
  late-handler as Xvfb, slowed down: makes its display sockets, then only after 0.5 s installs
               its SIGTERM handler (which removes its socket file) and writes its number; a
               SIGTERM in between kills it by the default action and leaves the file
If $FAKE_X_REPORT names a file, it writes "pid=..., grandchild=..., exit_at=..." lines there.
"""

import os
import signal
import sys
import time

args = sys.argv[1:]
fd = int(args[args.index("-displayfd") + 1])
mode = args[-1]
report_path = os.environ.get("FAKE_X_REPORT")


def host_pid() -> int:
    """Our pid as the test sees it: /proc is the host's, also inside a PID namespace."""
    return int(os.readlink("/proc/self"))


def report(**facts):
    if report_path:
        with open(report_path, "a") as stream:
            for key, value in facts.items():
                stream.write(f"{key}={value}\n")


def hang():
    # Not signal.pause(): a signal that lands after Python's last check for one and before
    # pause() blocks is handled only at the next signal (its handler, e.g. late-handler's
    # give_up, then never runs). Its byte in the wakeup pipe wakes select() in any case.
    import select

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    while True:
        select.select([read_end], [], [])
        os.read(read_end, 512)


report(pid=host_pid())
if mode == "never":
    print("fake: never ready", file=sys.stderr, flush=True)
    hang()
elif mode == "exit":
    print("fake: cannot open virtual screen", file=sys.stderr, flush=True)
    sys.exit(1)
elif mode == "exit-later":
    time.sleep(0.3)
    report(exit_at=time.time())
    sys.exit(1)
elif mode == "garbage":
    os.write(fd, b"hello\n")
    hang()
elif mode == "partial":
    os.write(fd, b"12")
    hang()
elif mode == "close":
    os.close(fd)
    hang()
elif mode.startswith("number="):
    os.write(fd, mode.split("=")[1].encode() + b"\n")
    hang()
elif mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    report(ignoring=1)
    hang()
elif mode == "grandchild":
    told, tell = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(fd)
        report(grandchild=host_pid())  # itself: the host's pid, also in a PID namespace
        os.close(tell)
        hang()
    os.close(tell)
    os.read(told, 1)  # reported
    hang()
elif mode.startswith("slow="):
    time.sleep(float(mode.split("=")[1]))
    report(exec_at=time.time())
    os.execvp("Xvfb", ["Xvfb", *args[:-1]])
elif mode == "wrapper":
    told, tell = os.pipe()
    server = os.fork()
    if server == 0:
        report(server=host_pid())  # in the test's pid namespace; exec keeps it
        os.close(tell)
        os.execvp("Xvfb", ["Xvfb", *args[:-1]])
    os.close(tell)
    os.read(told, 1)
    os.waitpid(server, 0)
elif mode in ("listen-stuck", "late-handler", "mute"):
    import socket

    if mode == "listen-stuck":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    held = []
    for number in range(60, 600):
        path = f"/tmp/.X11-unix/X{number}"
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            abstract.bind("\0" + path)
        except OSError:
            abstract.close()
            continue
        if os.path.lexists(path):
            abstract.close()
            continue
        named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        named.bind(path)
        for listener in (abstract, named):
            listener.listen()
        held = [abstract, named]
        report(socket=path)
        break
    if mode == "late-handler":
        time.sleep(0.5)  # the window: sockets made, SIGTERM still kills at once

        def give_up(_signum, _frame):
            os.unlink(path)
            sys.exit(0)

        signal.signal(signal.SIGTERM, give_up)
    if mode != "listen-stuck":
        os.write(fd, f"{number}\n".encode())
        report(wrote=number)
    hang()
elif mode in ("background", "double-fork"):
    first = os.fork()
    if first == 0:
        report(first=host_pid())  # it exits at once, but a test must see it gone too
        os.setsid()
        daemon = os.fork()
        if daemon == 0:
            report(daemon=host_pid())
            if mode == "double-fork":
                os.execvp("Xvfb", ["Xvfb", *args[:-1]])
            os.close(fd)
            hang()
        os._exit(0)
    os.waitpid(first, 0)
    if mode == "double-fork":
        os.close(fd)
    hang()
else:
    sys.exit(f"fake_x: unknown mode {mode}")
