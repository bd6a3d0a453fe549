"""A display's life under the restart policy: the state machine, the budget and its
ledger, the session loop (session.py); stop and status without a daemon (local_ops.py).
The foreground supervisor of `start`/`run` that runs a session is cli/foreground.py."""
