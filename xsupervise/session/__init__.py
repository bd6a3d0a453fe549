"""A display's life under the restart policy: the state machine, the budget and its
ledger, the session loop, and the foreground supervisor of `start`/`run`."""
