"""Pydantic models shared by the API, the store, the agent tools and scripts.

These are the single source of every field's type and constraint: request
validation, the stored rows, OpenAPI and tool schemas all derive from them.

One module per topic (base, spec, vm, scripts, images, snapshots, guest, events,
host, cluster); every model is imported from here: ``from hypermachine.models import Vm``.

May import: nothing of hypermachine (pydantic and the standard library only).
"""

from __future__ import annotations

from .base import NAME_PATTERN, NODE_PATTERN, VmState
from .cluster import (
    DiskPlan,
    FreeDevice,
    IncomingOffer,
    IncomingPorts,
    MigrateRequest,
    Migration,
    Node,
    NodeList,
    NodeState,
)
from .events import Event, EventType
from .guest import (
    ExecOutput,
    ExecRequest,
    ExecResult,
    ExecStatus,
    FileContent,
    FileReadRequest,
    FileWriteRequest,
    FileWritten,
    GuestPath,
    InterfaceStats,
)
from .host import (
    Capability,
    CapabilityMap,
    FirmwareKind,
    FirmwareSet,
    HostCapabilities,
    SevCapabilities,
)
from .images import ImageInfo
from .scripts import ScriptLimits, ScriptRequest, ScriptResponse
from .snapshots import (
    CreateFromSnapshotRequest,
    ForkRequest,
    ForkResult,
    RestoreRequest,
    Snapshot,
    SnapshotList,
    SnapshotRequest,
)
from .spec import (
    CloudInitSpec,
    ConsoleToken,
    ConsoleTokenRequest,
    CreateVmRequest,
    DisplaySpec,
    GpuSpec,
    Labels,
    LifecycleRequest,
    MemoryEncryption,
    NetworkSpec,
    PortForward,
    SecuritySpec,
    SnapshotRef,
    StopRequest,
    VmSpec,
)
from .vm import (
    DiskStats,
    ForwardInfo,
    GpuAssignment,
    GuestAgentInfo,
    HostDevices,
    MdevType,
    NetworkInfo,
    Passthrough,
    PciDevice,
    Vm,
    VmList,
    VmMetrics,
)

__all__ = [
    "NAME_PATTERN",
    "NODE_PATTERN",
    "Capability",
    "CapabilityMap",
    "CloudInitSpec",
    "ConsoleToken",
    "ConsoleTokenRequest",
    "CreateFromSnapshotRequest",
    "CreateVmRequest",
    "DiskPlan",
    "DiskStats",
    "DisplaySpec",
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
    "FirmwareKind",
    "FirmwareSet",
    "ForkRequest",
    "ForkResult",
    "ForwardInfo",
    "FreeDevice",
    "GpuAssignment",
    "GpuSpec",
    "GuestAgentInfo",
    "GuestPath",
    "HostCapabilities",
    "HostDevices",
    "ImageInfo",
    "IncomingOffer",
    "IncomingPorts",
    "InterfaceStats",
    "Labels",
    "LifecycleRequest",
    "MdevType",
    "MemoryEncryption",
    "MigrateRequest",
    "Migration",
    "NetworkInfo",
    "NetworkSpec",
    "Node",
    "NodeList",
    "NodeState",
    "Passthrough",
    "PciDevice",
    "PortForward",
    "RestoreRequest",
    "ScriptLimits",
    "ScriptRequest",
    "ScriptResponse",
    "SecuritySpec",
    "SevCapabilities",
    "Snapshot",
    "SnapshotList",
    "SnapshotRef",
    "SnapshotRequest",
    "StopRequest",
    "Vm",
    "VmList",
    "VmMetrics",
    "VmSpec",
    "VmState",
]
