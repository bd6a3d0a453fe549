"""What this machine tells us, and how we act on it: errors, log lines, the runtime
directory, processes pinned by pidfd, sockets and who holds them, systemd, the steps
that slow work is written as."""
