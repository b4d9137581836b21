"""The input models of the agent operations.

They compose the API models of :mod:`hypermachine.models` (the single source of
field types) and add what a REST call carries in its path or query: the VM id,
list filters. Every model forbids unknown fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..models import LifecycleRequest, StopRequest, VmState

__all__ = [
    "DEFAULT_WAIT_S",
    "DeleteVmInput",
    "ListImagesInput",
    "ListVmsInput",
    "RunVmScriptInput",
    "ScriptBody",
    "StartVmInput",
    "StopVmInput",
    "VmIdInput",
    "WaitForVmInput",
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


class ListImagesInput(_Input):
    """No arguments."""


class ScriptBody(_Input):
    """The body of ``POST /api/v1/vms/{vm_id}/script``."""

    language: Literal["rhai"] = Field(default="rhai", description="The script language.")
    code: str = Field(min_length=1, max_length=256 * 1024, description="The script's source.")
    args: dict[str, Any] | None = Field(
        default=None, description="Values the script reads as `args` (any JSON values)."
    )
    limits: dict[str, Any] | None = Field(
        default=None,
        description="Tighter sandbox limits (e.g. time_ms); never looser than the server's.",
    )


class RunVmScriptInput(VmIdInput, ScriptBody):
    """A script bound to one VM."""
