"""The QEMU process: its command line, QMP, launching and supervising it."""
