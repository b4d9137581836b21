"""Agent-facing faces of HyperMachine, all generated from one operation registry."""
