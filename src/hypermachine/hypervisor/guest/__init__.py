"""Reaching into the guest: its agent, exec, files and the serial console."""
