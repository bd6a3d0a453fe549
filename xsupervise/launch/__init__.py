"""One X server, from its settings to its teardown: a profile's command line, the
containment around it, -displayfd, the X11 handshake, the files and companions of a
session (window manager, compositor, recorder), and crash recovery."""
