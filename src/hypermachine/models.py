"""Pydantic models shared by the API, the store, the agent tools and scripts.

These are the single source of every field's type and constraint: request
validation, the stored rows, OpenAPI and tool schemas all derive from them.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "NAME_PATTERN",
    "CreateVmRequest",
    "Event",
    "EventType",
    "ExecOutput",
    "ExecRequest",
    "ExecResult",
    "ExecStatus",
    "FileContent",
    "FileReadRequest",
    "FileWriteRequest",
    "FileWritten",
    "GpuSpec",
    "GuestAgentInfo",
    "ImageInfo",
    "InterfaceStats",
    "LifecycleRequest",
    "NetworkSpec",
    "ScriptRequest",
    "ScriptResponse",
    "SecuritySpec",
    "StopRequest",
    "Vm",
    "VmList",
    "VmMetrics",
    "VmSpec",
    "VmState",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
_MAX_LABELS = 64
_MAX_LABEL_VALUE = 256


class VmState(StrEnum):
    CREATING = "creating"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    ERROR = "error"
    DELETING = "deleting"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkSpec(_Strict):
    """How the VM is attached: user-mode NAT, a host bridge, or no NIC at all."""

    type: Literal["nat", "bridge", "none"] = "nat"
    ip: str | None = Field(
        default=None, description="Static address (CIDR or plain) for bridge networks."
    )

    @field_validator("ip")
    @classmethod
    def _valid_ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ipaddress.ip_interface(value)
        except ValueError as err:
            raise ValueError(f"not an IP address or CIDR: {value!r}") from err
        return value

    @model_validator(mode="after")
    def _ip_needs_bridge(self) -> NetworkSpec:
        if self.ip is not None and self.type != "bridge":
            raise ValueError(
                "a static ip needs network type 'bridge' (nat guests get their address "
                "from QEMU's user-mode network)"
            )
        return self


class GpuSpec(_Strict):
    enabled: bool = False
    type: Literal["passthrough", "vgpu"] = "passthrough"


class SecuritySpec(_Strict):
    secure_boot: bool = False
    vtpm: bool = False
    memory_encryption: Literal["none", "sev", "tdx"] = "none"


Labels = Annotated[dict[str, str], Field(max_length=_MAX_LABELS)]


class VmSpec(_Strict):
    """What a client asks for; stored with the VM and used to build its command line."""

    name: str = Field(pattern=NAME_PATTERN, description="Letters, digits, '-', '_', '.'.")
    cpus: int = Field(default=1, ge=1, le=128)
    memory_mb: int = Field(default=1024, ge=512, le=1_048_576)
    disk_gb: int = Field(default=10, ge=1, le=10_000)
    image: str = Field(min_length=1, max_length=64)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    gpu: GpuSpec = Field(default_factory=GpuSpec)
    security: SecuritySpec = Field(default_factory=SecuritySpec)
    labels: Labels = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not _LABEL_KEY.match(key):
                raise ValueError(f"label key {key!r} must match {_LABEL_KEY.pattern}")
            if len(value) > _MAX_LABEL_VALUE or any(ord(c) < 32 for c in value):
                raise ValueError(f"label {key!r}: value too long or has control characters")
        return labels


class CreateVmRequest(VmSpec):
    start: bool = Field(default=False, description="Start the VM as soon as it is created.")
    wait: bool = Field(default=False, description="Return only once the VM reached its state.")


class LifecycleRequest(_Strict):
    wait: bool = False
    timeout_s: float | None = Field(default=None, gt=0, le=3600)


class StopRequest(LifecycleRequest):
    force: bool = Field(default=False, description="Quit QEMU at once instead of ACPI powerdown.")


class GuestAgentInfo(_Strict):
    """Whether qemu-ga answers in the guest (live, never stored)."""

    connected: bool = False
    version: str | None = None


class Vm(VmSpec):
    """A VM as the API reports it."""

    id: str
    uuid: str
    state: VmState
    state_reason: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    accelerator: str | None = None
    pid: int | None = None
    guest_agent: GuestAgentInfo = Field(default_factory=GuestAgentInfo)


class VmList(_Strict):
    vms: list[Vm]
    next_cursor: str | None = None


class DiskStats(_Strict):
    device: str
    read_bytes: int
    write_bytes: int
    read_ops: int
    write_ops: int


class VmMetrics(_Strict):
    vm_id: str
    vcpus: int
    cpu_percent: float
    memory_rss_bytes: int
    memory_configured_bytes: int
    disk: list[DiskStats]
    disk_read_bytes: int
    disk_write_bytes: int
    disk_read_ops: int
    disk_write_ops: int
    uptime_seconds: float
    cpu_seconds_total: float = 0.0


class ScriptRequest(_Strict):
    """A script to run in the sandbox, with ``vm`` bound to the VM of the URL."""

    language: str = Field(default="rhai", description='Only "rhai" (the default).')
    code: str = Field(max_length=1024 * 1024, description="The Rhai source.")
    args: dict[str, Any] | None = Field(
        default=None, description="A JSON object the script sees as the constant `args`."
    )
    limits: dict[str, int] | None = Field(
        default=None,
        description="Lower any limit: max_operations, max_call_depth, max_expr_depth, "
        "max_string_size, max_array_size, max_map_size, max_output_bytes, memory_bytes, "
        "timeout_ms.",
    )


class ScriptResponse(_Strict):
    result: Any = Field(description="JSON of the script's last value (() is null).")
    result_type: str = Field(description="Rhai's type_of name of the result.")
    output: list[str] = Field(description="Lines printed by print() and debug().")
    duration_ms: float
    operations: int


class ImageInfo(_Strict):
    name: str
    description: str
    os: str
    boot: str
    format: str
    source: str
    available: bool
    size_bytes: int | None = None
    url: str | None = None


# -- guest: exec, files, events (docs/guest.md) ----------------------------------

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_MAX_ARG = 64 * 1024


def _no_nul(value: str, what: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character")
    return value


def _check_b64(value: str | None) -> str | None:
    if value is None:
        return None
    import base64
    import binascii

    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError("not valid base64") from err
    return value


class ExecRequest(_Strict):
    """A command to run in the guest through qemu-ga (argv, never a shell string)."""

    command: list[Annotated[str, Field(max_length=_MAX_ARG)]] = Field(
        min_length=1, max_length=4096, description="argv; command[0] is looked up in PATH"
    )
    env: dict[str, Annotated[str, Field(max_length=_MAX_ARG)]] = Field(
        default_factory=dict,
        max_length=256,
        description="added to a default environment (PATH, HOME, LANG)",
    )
    stdin: str | None = Field(default=None, description="text fed to the command's stdin")
    stdin_b64: str | None = Field(default=None, description="bytes fed to stdin, base64")
    timeout_s: float | None = Field(
        default=None, gt=0, description="kill the command after this long (server default/max)"
    )
    wait: bool = Field(default=True, description="false: return an exec id at once")

    @field_validator("command")
    @classmethod
    def _valid_command(cls, command: list[str]) -> list[str]:
        if not command[0]:
            raise ValueError("command[0] (the program) must not be empty")
        for arg in command:
            _no_nul(arg, "an argument")
        return command

    @field_validator("env")
    @classmethod
    def _valid_env(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"environment name {name!r} must match {_ENV_NAME.pattern}")
            _no_nul(value, f"environment value {name}")
        return env

    @field_validator("stdin_b64")
    @classmethod
    def _valid_b64(cls, value: str | None) -> str | None:
        return _check_b64(value)

    @model_validator(mode="after")
    def _one_stdin(self) -> ExecRequest:
        if self.stdin is not None and self.stdin_b64 is not None:
            raise ValueError("give stdin or stdin_b64, not both")
        return self


class ExecStatus(StrEnum):
    RUNNING = "running"
    EXITED = "exited"  # the command ended by itself (exit_code or signal set)
    TIMED_OUT = "timed_out"  # killed after timeout_s
    FAILED = "failed"  # the agent or the VM went away before the end; see error


class ExecResult(_Strict):
    """One command's outcome; output is text when valid UTF-8, else base64 in ``*_b64``."""

    exec_id: str
    vm_id: str
    command: list[str]
    status: ExecStatus
    exit_code: int | None = None
    signal: int | None = None
    stdout: str | None = ""
    stderr: str | None = ""
    stdout_b64: str | None = None
    stderr_b64: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    truncated: bool = False
    streamed: bool = Field(description="output was captured while running (wait=false)")
    duration_ms: int
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None


class ExecOutput(_Strict):
    """A piece of a running command's output, as streamed (SSE ``stdout``/``stderr``)."""

    stream: Literal["stdout", "stderr"]
    offset: int = Field(description="byte offset of this piece in its stream")
    text: str | None = None
    b64: str | None = None


def _guest_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("the guest path must be absolute")
    return _no_nul(value, "the guest path")


GuestPath = Annotated[str, Field(min_length=1, max_length=4096, description="absolute guest path")]


class FileReadRequest(_Strict):
    path: GuestPath

    @field_validator("path")
    @classmethod
    def _valid_path(cls, value: str) -> str:
        return _guest_path(value)


class FileWriteRequest(FileReadRequest):
    """Exactly one of ``text`` (written as UTF-8) or ``content_b64``."""

    text: str | None = None
    content_b64: str | None = None

    @field_validator("content_b64")
    @classmethod
    def _valid_b64(cls, value: str | None) -> str | None:
        return _check_b64(value)

    @model_validator(mode="after")
    def _one_content(self) -> FileWriteRequest:
        if (self.text is None) == (self.content_b64 is None):
            raise ValueError("give exactly one of text or content_b64")
        return self


class FileContent(_Strict):
    path: str
    size: int
    text: str | None = Field(description="the content when it is valid UTF-8")
    content_b64: str | None = Field(description="the content as base64 otherwise")


class FileWritten(_Strict):
    path: str
    size: int


class EventType(StrEnum):
    VM_CREATED = "vm.created"
    VM_DELETED = "vm.deleted"
    VM_STATE_CHANGED = "vm.state_changed"
    QEMU_EXITED = "vm.qemu_exited"
    GUEST_PANICKED = "vm.guest_panicked"
    GUEST_AGENT_CONNECTED = "guest_agent.connected"
    GUEST_AGENT_DISCONNECTED = "guest_agent.disconnected"


class Event(_Strict):
    """One entry of the event log; ``id`` grows monotonically."""

    id: int
    time: datetime
    type: EventType
    vm_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class InterfaceStats(_Strict):
    """One guest network interface's counters, as qemu-ga reports them."""

    name: str
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
