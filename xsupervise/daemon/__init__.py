"""`xsupervise serve`: its control socket and protocol, its sessions, warm pools and
leases."""
