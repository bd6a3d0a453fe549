"""One lessee of the chaos test (test_pool_chaos.py): it loops on leases of pool "default",
marks each display (a root-window property) and checks at the end of the lease that the mark
is still its own. It notes every step as one JSON line in its log; the test judges them.

    chaos_lessee.py SOCKET NAME LOG        (SIGTERM: finish the lease in hand, then exit 0)
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import time

from xsupervise import Display, XSuperviseError

MARK = "_XSUPERVISE_CHAOS"
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class Lost(Exception):
    """The display stopped answering, or its lease ended."""


def die_with_us() -> None:
    """xprop dies with its lessee, SIGKILLed by the test (no xprop outlives the test)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def main() -> int:
    socket_path, name, log_path = sys.argv[1:4]
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def note(**fields: object) -> None:
        log.write(json.dumps({"t": time.time(), "lessee": name, **fields}) + "\n")

    def xprop(env: dict[str, str], *args: str) -> str:
        done = subprocess.run(
            ["xprop", "-root", *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=10,
            preexec_fn=die_with_us,
        )
        if done.returncode:
            raise Lost(f"xprop exited {done.returncode}: {done.stderr.strip()[:200]}")
        return done.stdout

    count = 0
    while not stopping:
        count += 1
        mark = f"{name}-{os.getpid()}-{count}"
        asked = time.time()
        try:
            display = Display(pool="default", socket=socket_path).start()
        except XSuperviseError as error:
            note(kind="fail", stage="lease", why=str(error), asked=asked)
            time.sleep(0.05)  # the daemon is down: ask again soon
            continue
        info = {
            "display": display.display,
            "server_pid": display.server_pid,
            "leased_at": time.time(),
        }
        note(kind="lease", **info)
        try:
            found = xprop(display.env, MARK)
            # A fresh server has no mark ("not found", "no such atom"): this one was used.
            if " = " in found:
                note(kind="reused", found=found.strip(), **info)
            xprop(display.env, "-f", MARK, "8s", "-set", MARK, mark)
            until = time.monotonic() + random.uniform(0.05, 0.5)
            while time.monotonic() < until:
                if not display.alive:
                    raise Lost("display.alive is False: its lease ended")
                time.sleep(0.02)
            found = xprop(display.env, MARK)
            if f'"{mark}"' in found:
                note(kind="ok", **info)
            elif display.alive:  # another's mark on a live display of ours: shared
                note(kind="shared", found=found.strip(), **info)
            else:
                raise Lost("its lease ended while the mark was read")
        except (Lost, subprocess.TimeoutExpired) as error:
            note(kind="fail", stage="use", why=str(error), **info)
        finally:
            display.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
