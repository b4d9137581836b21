"""The input models of the operations.

They compose the API models of :mod:`hypermachine.models` (the single source of
field types) and add what a REST call carries in its path, query or headers: the
VM id, list filters, an idempotency key. Every model forbids unknown fields, and
every face (REST, tools, MCP, scripts) is validated by the same model.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..models import (
    NAME_PATTERN,
    ConsoleTokenRequest,
    CreateVmRequest,
    ExecRequest,
    FileReadRequest,
    FileWriteRequest,
    ForkRequest,
    LifecycleRequest,
    MigrateRequest,
    RestoreRequest,
    ScriptRequest,
    SnapshotRequest,
    StopRequest,
    VmState,
)

__all__ = [
    "DEFAULT_WAIT_S",
    "AssetInput",
    "AuditPageInput",
    "ConsoleLogInput",
    "ConsoleSessionInput",
    "ConsoleTokenInput",
    "CreateVmInput",
    "DeleteVmInput",
    "EventsInput",
    "ExecIdInput",
    "ExecInVmInput",
    "ForkVmInput",
    "HostCapabilitiesInput",
    "KeyIdInput",
    "ListImagesInput",
    "ListVmsInput",
    "MigrateVmInput",
    "NoInput",
    "ProviderInput",
    "QmpInput",
    "ReadVmFileInput",
    "RestoreSnapshotInput",
    "RootInput",
    "RunVmScriptInput",
    "SnapshotNameInput",
    "StartVmInput",
    "StopVmInput",
    "TakeSnapshotInput",
    "ToolCallInput",
    "UiAssetInput",
    "UiViewInput",
    "UploadVmFileInput",
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


_MAX_LABEL_FILTERS = 64


def _comma_list(value: object) -> object:
    """``"running,paused"`` or ``["running", "paused,stopped"]`` as one list (REST
    repeats a parameter or separates with commas; tools send a list)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        return value
    parts = (item.split(",") if isinstance(item, str) else [item] for item in items)
    return [part for group in parts for part in group if part != ""]


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
        default=None,
        max_length=_MAX_LABEL_FILTERS,
        description="Only VMs carrying all of these labels.",
    )
    limit: int = Field(default=100, ge=1, le=500, description="At most this many VMs.")
    cursor: str | None = Field(
        default=None, max_length=256, description="next_cursor of the previous page."
    )

    @field_validator("state", mode="before")
    @classmethod
    def _split_states(cls, value: object) -> object:
        return _comma_list(value)

    @field_validator("labels", mode="before")
    @classmethod
    def _label_filters(cls, value: object) -> object:
        """REST sends ``label=key=value`` items; tools send a map."""
        if not isinstance(value, list):
            return value
        if len(value) > _MAX_LABEL_FILTERS:
            raise ValueError(f"at most {_MAX_LABEL_FILTERS} label filters")
        labels: dict[str, object] = {}
        for item in value:
            key, sep, rest = str(item).partition("=")
            if not sep or not key:
                raise ValueError(f"label filters look like key=value, not {str(item)[:100]!r}")
            labels[key] = rest
        return labels


class DeleteVmInput(VmIdInput):
    force: bool = Field(
        default=False, description="Kill a VM that is still running instead of refusing."
    )


class StartVmInput(VmIdInput, LifecycleRequest):
    """Start: the VM id plus the REST body (wait, timeout_s)."""


class StopVmInput(VmIdInput, StopRequest):
    """Stop: the VM id plus the REST body (force, wait, timeout_s)."""


class MigrateVmInput(VmIdInput, MigrateRequest):
    """Migrate: the VM id plus the REST body (node)."""


class WaitForVmInput(VmIdInput):
    state: list[VmState] = Field(
        min_length=1, max_length=8, description="The state(s) to wait for (any of them)."
    )
    timeout_s: float = Field(
        default=DEFAULT_WAIT_S, gt=0, le=3600, description="Give up after this many seconds."
    )

    @field_validator("state", mode="before")
    @classmethod
    def _split_states(cls, value: object) -> object:
        return _comma_list(value)


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


class CreateVmInput(CreateVmRequest):
    """Create: the VM spec plus the REST ``Idempotency-Key`` header."""

    idempotency_key: str | None = Field(
        default=None,
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="Retries with the same key and spec return the first VM (24 h).",
    )


class ExecIdInput(VmIdInput):
    exec_id: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$", description="From exec_in_vm."
    )


class UploadVmFileInput(_GuestCall, FileReadRequest):
    """A guest file written from raw bytes (REST PUT)."""

    data: bytes = Field(description="The file's content.")


class ConsoleLogInput(VmIdInput):
    tail: int = Field(
        default=100, ge=0, le=10_000, description="Only the last N lines of the serial log."
    )


class ConsoleTokenInput(VmIdInput, ConsoleTokenRequest):
    """A console token: the VM id plus the REST body (kind)."""


class ConsoleSessionInput(VmIdInput):
    token: str | None = Field(
        default=None,
        max_length=128,
        description="A console token (create_console_token): how a browser authenticates.",
    )


class EventsInput(_Input):
    vm_id: str | None = Field(
        default=None, max_length=64, description="Only this VM's events (also a deleted VM's)."
    )
    after: int | None = Field(
        default=None,
        ge=0,
        le=2**62,
        description="Replay from after this event id (Last-Event-ID); default only new ones.",
    )


class QmpInput(VmIdInput):
    command: str = Field(max_length=64, description="A read-only QMP query.")
    arguments: dict[str, Any] | None = None


class KeyIdInput(_Input):
    key_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")


class AuditPageInput(_Input):
    limit: int = Field(default=100, ge=1, le=500, description="Page size.")
    cursor: int | None = Field(
        default=None, ge=1, le=2**62, description="next_cursor of the previous page."
    )


class ProviderInput(_Input):
    provider: str = Field(max_length=32, description="openai, anthropic, gemini or mcp.")


class AssetInput(_Input):
    filename: str = Field(max_length=64)


class UiViewInput(_Input):
    view: str = Field(default="", max_length=512, description="The app's own route (/ui/…).")


class UiAssetInput(_Input):
    asset: str = Field(
        max_length=256,
        pattern=r"^[A-Za-z0-9@_-][A-Za-z0-9@._/-]*$",
        description="A file of the web console (its own or a vendored npm file).",
    )


class RootInput(_Input):
    accept: str = Field(default="", max_length=4096, description="The Accept header.")


class ToolCallInput(BaseModel):
    """Any JSON object: a tool call in one of the accepted shapes (told apart later)."""

    model_config = ConfigDict(extra="allow")


class TakeSnapshotInput(VmIdInput, SnapshotRequest):
    """A snapshot of one VM."""


class SnapshotNameInput(VmIdInput):
    """Names one snapshot of one VM."""

    name: str = Field(pattern=NAME_PATTERN, description="The snapshot's name.")


class RestoreSnapshotInput(SnapshotNameInput, RestoreRequest):
    """Restore: the VM id and snapshot name plus the REST body (wait, timeout_s)."""


class ForkVmInput(VmIdInput, ForkRequest):
    """Fork: the parent's id plus the REST body."""
