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
    "GpuSpec",
    "ImageInfo",
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
    tenant: str = Field(
        default="default", description="The tenant of the API key that created the VM."
    )


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


class ScriptRequest(_Strict):
    """A script to run in the sandbox, with ``vm`` bound to the VM of the URL."""

    language: str = Field(description='Only "rhai".')
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
