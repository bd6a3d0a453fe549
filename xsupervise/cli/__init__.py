"""The command line: the console entry point (with `run --pool`'s fast path), the
parsers, and one module per group of commands."""
