"""HyperMachine: QEMU virtual machines over QMP for people and AI agents."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hypermachine")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = ["__version__"]
