"""HyperMachine: QEMU virtual machines over QMP for people and AI agents.

The shared modules at this level (``config``, ``errors``, ``states``, ``store``,
``events``, ``telemetry``, ``images``) sit under the packages; ``server``, ``cli``,
``hostcli`` and ``scriptcli`` assemble the packages into programs; ``watchdog`` is a
program of its own, a cluster node's QEMU killer that imports almost nothing. Each package
says in its own docstring what it may import (tests/test_architecture.py holds
them to it, and to no import cycle anywhere).

May import: every package below (this level is the composition root).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hypermachine")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
