"""The ``xsupervise`` console-script entry point: ``run --pool``'s fast path
(``cli.pool_run``), else the full CLI (``cli.main.main``); then a fast exit."""

from __future__ import annotations

import os
import sys


def console() -> None:
    """The console-script entry point: the fast path or ``cli.main.main()``, then a fast exit.

    Everything of ours is torn down and reaped before we get here; what would remain is the
    interpreter's own finalisation (~10 ms, a tenth of a whole `xsupervise run`), which we
    skip after flushing what the user is owed."""
    from .pool_run import run_pool_fast

    code = run_pool_fast(sys.argv[1:])
    if code is None:
        from .main import main

        code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    sys.stderr.flush()
    os._exit(code)
