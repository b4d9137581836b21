"""The HyperMachine SDK: ``Client`` (blocking) and ``AsyncClient`` (asyncio or Trio).

    from hypermachine.client import Client

    with Client() as hm:  # HM_SERVER / HM_API_KEY, else http://127.0.0.1:8080
        vm = hm.vms.create(name="demo", image="tiny", start=True, wait=True)
        print(vm.exec(["uname", "-r"], wait_agent=60).stdout)
        vm.delete(force=True)

Answers are the server's own models (``hypermachine.models``); errors are the
server's own exception classes (``hypermachine.errors``), one per error code.
Importing this package needs only the client's dependencies (httpx, pydantic, …),
none of the server's. See docs/sdk.md.

May import: ``errors``, ``groups``, ``models`` (and nothing that needs the server's dependencies).
"""

from __future__ import annotations

from ..errors import *  # noqa: F403  (every error class, by the server's code)
from ..errors import __all__ as _error_names
from ..models import (
    Event,
    ExecOutput,
    ExecResult,
    ExecStatus,
    FileWritten,
    HostCapabilities,
    ImageInfo,
    ScriptResponse,
    Snapshot,
    Vm,
    VmMetrics,
    VmSpec,
    VmState,
)
from .async_client import (
    AsyncClient,
    AsyncConsoleSession,
    AsyncFiles,
    AsyncSnapshots,
    AsyncVmHandle,
)
from .base import DEFAULT_SERVER
from .errors import error_class
from .sync_client import Client, ConsoleSession, Files, Snapshots, VmHandle

__all__ = [
    "DEFAULT_SERVER",
    "AsyncClient",
    "AsyncConsoleSession",
    "AsyncFiles",
    "AsyncSnapshots",
    "AsyncVmHandle",
    "Client",
    "ConsoleSession",
    "Event",
    "ExecOutput",
    "ExecResult",
    "ExecStatus",
    "FileWritten",
    "Files",
    "HostCapabilities",
    "ImageInfo",
    "ScriptResponse",
    "Snapshot",
    "Snapshots",
    "Vm",
    "VmHandle",
    "VmMetrics",
    "VmSpec",
    "VmState",
    "error_class",
    *_error_names,
]
