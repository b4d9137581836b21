"""The input models of the agent operations.

They compose the API models of :mod:`hypermachine.models` (the single source of
field types) and add what a REST call carries in its path or query: the VM id,
list filters. Every model forbids unknown fields.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ..models import (
    NAME_PATTERN,
    ExecRequest,
    FileReadRequest,
    FileWriteRequest,
    ForkRequest,
    LifecycleRequest,
    RestoreRequest,
    ScriptRequest,
    SnapshotRequest,
    StopRequest,
    VmState,
)

__all__ = [
    "DEFAULT_WAIT_S",
    "DeleteVmInput",
    "ExecInVmInput",
    "ForkVmInput",
    "HostCapabilitiesInput",
    "ListImagesInput",
    "ListVmsInput",
    "NoInput",
    "ReadVmFileInput",
    "RestoreSnapshotInput",
    "RunVmScriptInput",
    "SnapshotNameInput",
    "StartVmInput",
    "StopVmInput",
    "TakeSnapshotInput",
    "VmIdInput",
    "WaitForVmInput",
    "WriteVmFileInput",
]

DEFAULT_WAIT_S = 60.0
"""How long ``wait: true`` waits when no timeout is given (as the REST API does)."""

VmId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="The VM's id, as returned by create_vm or list_vms (e.g. 'vm-3f2a9c0b1d2e').",
    ),
]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VmIdInput(_Input):
    """Names one VM."""

    vm_id: VmId


class ListVmsInput(_Input):
    """Filters for listing VMs; all optional."""

    state: list[VmState] | None = Field(
        default=None, max_length=8, description="Only VMs in one of these states."
    )
    name: str | None = Field(default=None, max_length=63, description="Only the VM with this name.")
    labels: dict[str, str] | None = Field(
        default=None, max_length=64, description="Only VMs carrying all of these labels."
    )
    limit: int = Field(default=100, ge=1, le=500, description="At most this many VMs.")
    cursor: str | None = Field(
        default=None, max_length=256, description="next_cursor of the previous page."
    )


class DeleteVmInput(VmIdInput):
    force: bool = Field(
        default=False, description="Kill a VM that is still running instead of refusing."
    )


class StartVmInput(VmIdInput, LifecycleRequest):
    """Start: the VM id plus the REST body (wait, timeout_s)."""


class StopVmInput(VmIdInput, StopRequest):
    """Stop: the VM id plus the REST body (force, wait, timeout_s)."""


class WaitForVmInput(VmIdInput):
    state: VmState = Field(description="The state to wait for.")
    timeout_s: float = Field(
        default=DEFAULT_WAIT_S, gt=0, le=3600, description="Give up after this many seconds."
    )


class NoInput(_Input):
    """No arguments."""


class HostCapabilitiesInput(_Input):
    refresh: bool = Field(default=False, description="Probe the host again (slower).")


class ListImagesInput(NoInput):
    """No arguments."""


class RunVmScriptInput(VmIdInput, ScriptRequest):
    """A script bound to one VM."""


class _GuestCall(VmIdInput):
    wait_agent_s: float = Field(
        default=0, ge=0, le=600, description="Wait this long for the guest agent after a boot."
    )


class ExecInVmInput(_GuestCall, ExecRequest):
    """A command to run in one VM."""


class ReadVmFileInput(_GuestCall, FileReadRequest):
    """A guest file to read."""


class WriteVmFileInput(_GuestCall, FileWriteRequest):
    """A guest file to write."""


class TakeSnapshotInput(VmIdInput, SnapshotRequest):
    """A snapshot of one VM."""


class SnapshotNameInput(VmIdInput):
    """Names one snapshot of one VM."""

    name: str = Field(pattern=NAME_PATTERN, description="The snapshot's name.")


class RestoreSnapshotInput(SnapshotNameInput, RestoreRequest):
    """Restore: the VM id and snapshot name plus the REST body (wait, timeout_s)."""


class ForkVmInput(VmIdInput, ForkRequest):
    """Fork: the parent's id plus the REST body."""
