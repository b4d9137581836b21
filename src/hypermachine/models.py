"""Pydantic models shared by the API, the store, the agent tools and scripts.

These are the single source of every field's type and constraint: request
validation, the stored rows, OpenAPI and tool schemas all derive from them.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "NAME_PATTERN",
    "Capability",
    "CapabilityMap",
    "CloudInitSpec",
    "CreateFromSnapshotRequest",
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
    "FirmwareSet",
    "ForkRequest",
    "ForkResult",
    "ForwardInfo",
    "GpuAssignment",
    "GpuSpec",
    "GuestAgentInfo",
    "HostCapabilities",
    "HostDevices",
    "ImageInfo",
    "InterfaceStats",
    "LifecycleRequest",
    "MdevType",
    "NetworkInfo",
    "NetworkSpec",
    "Passthrough",
    "PciDevice",
    "PortForward",
    "RestoreRequest",
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

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
NODE_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
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
    SNAPSHOTTING = "snapshotting"
    RESTORING = "restoring"
    HIBERNATED = "hibernated"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_IFACE_NAME = r"^[A-Za-z0-9_.-]{1,15}$"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_MAX_PORTS = 32


class PortForward(_Strict):
    """A host port of the server's forward address forwarded to a guest port (nat only)."""

    host: int = Field(ge=1, le=65535, description="Host port (the server's allowed range).")
    guest: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"


class NetworkSpec(_Strict):
    """How the VM is attached: user-mode NAT, a host bridge, or no NIC at all.

    On create the server fills in what it chose: ``mac`` (derived from the VM when
    not given), ``bridge`` (the only configured one when not given) and ``ip`` in
    CIDR form.
    """

    type: Literal["nat", "bridge", "none"] = "nat"
    ip: str | None = Field(
        default=None, description="Static IPv4 address (CIDR or plain) for bridge networks."
    )
    bridge: str | None = Field(
        default=None, pattern=_IFACE_NAME, description="A host bridge allowed by the server."
    )
    mac: str | None = Field(
        default=None, description="Unicast MAC; default 52:54:00:xx:xx:xx from the VM id."
    )
    ports: list[PortForward] = Field(default_factory=list, max_length=_MAX_PORTS)

    @field_validator("ip")
    @classmethod
    def _valid_ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            address = ipaddress.ip_interface(value)
        except ValueError as err:
            raise ValueError(f"not an IP address or CIDR: {value!r}") from err
        if address.version != 4:
            raise ValueError("static addresses are IPv4")
        return value

    @field_validator("mac")
    @classmethod
    def _valid_mac(cls, value: str | None) -> str | None:
        if value is None:
            return None
        mac = value.lower()
        if not _MAC.fullmatch(mac):
            raise ValueError("a MAC address looks like 52:54:00:12:34:56")
        if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
            raise ValueError("the MAC address must be a unicast address")
        return mac

    @model_validator(mode="after")
    def _fits_type(self) -> NetworkSpec:
        if self.ip is not None and self.type != "bridge":
            raise ValueError(
                "a static ip needs network type 'bridge' (nat guests get their address "
                "from QEMU's user-mode network)"
            )
        if self.bridge is not None and self.type != "bridge":
            raise ValueError("'bridge' goes with network type 'bridge'")
        if self.ports and self.type != "nat":
            raise ValueError("port forwards go with network type 'nat'")
        if self.mac is not None and self.type == "none":
            raise ValueError("network type 'none' has no NIC to give a MAC")
        seen = {(p.protocol, p.host) for p in self.ports}
        if len(seen) != len(self.ports):
            raise ValueError("a host port is forwarded twice")
        return self


class GpuSpec(_Strict):
    """A GPU for the VM: a whole PCI device (passthrough) or a mediated device (vgpu)."""

    enabled: bool = False
    type: Literal["passthrough", "vgpu"] = "passthrough"
    device: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$",
        description="PCI address (passthrough) or vGPU parent; default: any free one.",
    )
    profile: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$",
        description="vGPU: mdev type id (nvidia-63) or its name (GRID P4-1Q).",
    )

    @model_validator(mode="after")
    def _fits_type(self) -> GpuSpec:
        if not self.enabled and (self.device or self.profile):
            raise ValueError("device and profile need enabled: true")
        if self.profile is not None and self.type != "vgpu":
            raise ValueError("a profile goes with type 'vgpu'")
        return self


_HOSTNAME_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_USER_DATA_HEADERS = (
    "#cloud-config",
    "#!",
    "#include",
    "#cloud-boothook",
    "## template: jinja",
    "Content-Type: multipart/",
)
_MAX_USER_DATA = 256 * 1024
_MAX_KEY = 16 * 1024


def _check_ssh_key(key: str) -> str:
    """``TYPE BASE64 [comment]`` whose blob names the same key type."""
    parts = key.strip().split(" ", 2)
    if len(parts) < 2 or parts[0] not in _SSH_KEY_TYPES:
        raise ValueError(f"not an SSH public key (types: {', '.join(sorted(_SSH_KEY_TYPES))})")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError as err:
        raise ValueError("the SSH key's base64 part does not decode") from err
    length = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + length].decode(errors="replace") != parts[0]:
        raise ValueError("the SSH key's blob does not match its type")
    if len(parts) == 3 and any(ord(c) < 32 or ord(c) == 127 for c in parts[2]):
        raise ValueError("the SSH key's comment has control characters")
    return key.strip()


class CloudInitSpec(_Strict):
    """A NoCloud seed for cloud images: the user's data or generated keys and hostname."""

    user_data: str | None = Field(
        default=None,
        max_length=_MAX_USER_DATA,
        description="Verbatim user-data (#cloud-config, #!script, multipart, ...).",
    )
    ssh_authorized_keys: list[Annotated[str, Field(max_length=_MAX_KEY)]] = Field(
        default_factory=list, max_length=32
    )
    hostname: str | None = Field(default=None, max_length=253)

    @field_validator("user_data")
    @classmethod
    def _valid_user_data(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "\x00" in value:
            raise ValueError("user_data has a NUL character")
        if not value.lstrip("\ufeff").startswith(_USER_DATA_HEADERS):
            raise ValueError(
                "cloud-init ignores user_data that does not start with one of: "
                + ", ".join(_USER_DATA_HEADERS)
            )
        return value

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _valid_keys(cls, keys: list[str]) -> list[str]:
        return [_check_ssh_key(key) for key in keys]

    @field_validator("hostname")
    @classmethod
    def _valid_hostname(cls, value: str | None) -> str | None:
        if value is not None and not all(_HOSTNAME_LABEL.fullmatch(p) for p in value.split(".")):
            raise ValueError("a hostname is dot-separated labels of letters, digits and '-'")
        return value


MemoryEncryption = Literal["none", "sev", "sev_es", "sev_snp", "tdx"]
_SEV_ES_BIT = 0x4  # SEV guest policy bit 2: SEV-ES
_SNP_RESERVED_BIT = 0x20000  # SNP guest policy bit 17: must be one


class SecuritySpec(_Strict):
    """Protections the VM must have; a host that cannot give one refuses the VM."""

    secure_boot: bool = Field(
        default=False,
        description="UEFI secure boot with Microsoft keys enrolled (needs firmware 'uefi').",
    )
    vtpm: bool = Field(default=False, description="A TPM 2.0 (swtpm) of the VM's own.")
    memory_encryption: MemoryEncryption = Field(
        default="none", description="Confidential computing: AMD SEV / SEV-ES / SEV-SNP or TDX."
    )
    policy: int | None = Field(
        default=None,
        ge=0,
        le=0xFFFFFFFFFFFFFFFF,
        description="SEV/SNP guest policy; default 0x1 (sev), 0x5 (sev_es), 0x30000 (sev_snp).",
    )

    @model_validator(mode="after")
    def _policy_fits_variant(self) -> SecuritySpec:
        kind, policy = self.memory_encryption, self.policy
        if policy is None:
            return self
        if kind in ("none", "tdx"):
            raise ValueError(f"policy applies to sev, sev_es and sev_snp, not {kind!r}")
        if kind == "sev" and policy & _SEV_ES_BIT:
            raise ValueError("policy bit 2 (SEV-ES) is set: ask for memory_encryption 'sev_es'")
        if kind == "sev_es" and not policy & _SEV_ES_BIT:
            raise ValueError("an sev_es policy must have bit 2 (SEV-ES) set")
        if kind == "sev_snp" and not policy & _SNP_RESERVED_BIT:
            raise ValueError("an SNP policy must have bit 17 set (reserved, must be one)")
        if kind != "sev_snp" and policy > 0xFFFFFFFF:
            raise ValueError("an SEV policy is 32 bits")
        return self


Labels = Annotated[dict[str, str], Field(max_length=_MAX_LABELS)]


class DisplaySpec(_Strict):
    """A graphical display: ``vnc`` gives the VM a VGA card whose screen the server
    serves to a browser (noVNC) over a websocket; ``none`` (the default) has no display."""

    type: Literal["none", "vnc"] = "none"


class VmSpec(_Strict):
    """What a client asks for; stored with the VM and used to build its command line."""

    name: str = Field(pattern=NAME_PATTERN, description="Letters, digits, '-', '_', '.'.")
    cpus: int = Field(default=1, ge=1, le=128)
    memory_mb: int = Field(default=1024, ge=512, le=1_048_576)
    disk_gb: int = Field(default=10, ge=1, le=10_000)
    image: str = Field(min_length=1, max_length=64)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    gpu: GpuSpec = Field(
        default_factory=GpuSpec,
        description="A gpu object asks for a GPU unless it says enabled: false.",
    )
    security: SecuritySpec = Field(default_factory=SecuritySpec)
    firmware: Literal["bios", "uefi"] | None = Field(
        default=None,
        description="Boot firmware; default: the image's, and 'uefi' when security asks for it.",
    )
    labels: Labels = Field(default_factory=dict)
    cloud_init: CloudInitSpec | None = None
    display: DisplaySpec = Field(default_factory=DisplaySpec)

    @model_validator(mode="after")
    def _firmware_fits_security(self) -> VmSpec:
        if self.firmware == "bios" and self.security.secure_boot:
            raise ValueError("secure_boot needs firmware 'uefi' (SeaBIOS has no secure boot)")
        if self.firmware == "bios" and self.security.memory_encryption != "none":
            raise ValueError("memory encryption needs firmware 'uefi' (OVMF)")
        if self.security.secure_boot and self.security.memory_encryption != "none":
            raise ValueError(
                "secure_boot needs SMM, which encrypted guests cannot have: "
                "ask for one of secure_boot and memory_encryption"
            )
        return self

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return _check_labels(labels)

    @field_validator("gpu", mode="before")
    @classmethod
    def _given_means_wanted(cls, value: object) -> object:
        """A gpu object without ``enabled`` asks for a GPU (never dropped silently)."""
        if isinstance(value, dict) and "enabled" not in value:
            return {**value, "enabled": True}
        return value


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(f"label key {key!r} must match {_LABEL_KEY.pattern}")
        if len(value) > _MAX_LABEL_VALUE or any(ord(c) < 32 for c in value):
            raise ValueError(f"label {key!r}: value too long or has control characters")
    return labels


class CreateVmRequest(VmSpec):
    start: bool = Field(default=False, description="Start the VM as soon as it is created.")
    wait: bool = Field(default=False, description="Return only once the VM reached its state.")
    node: str | None = Field(
        default=None,
        pattern=NODE_PATTERN,
        description="The cluster node to create it on; omitted: where it fits (placement).",
    )


class SnapshotRef(_Strict):
    """A snapshot of a VM, named."""

    vm_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    snapshot: str = Field(pattern=NAME_PATTERN)


class ConsoleTokenRequest(_Strict):
    kind: Literal["serial", "vnc"] = Field(
        default="serial", description="Which console the token opens: serial or vnc (display)."
    )


class ConsoleToken(_Strict):
    """A single-use token opening one console of one VM (``?token=`` on its websocket)."""

    token: str
    kind: Literal["serial", "vnc"]
    expires_in: float = Field(description="Seconds the token stays valid (if unused).")


class LifecycleRequest(_Strict):
    wait: bool = False
    timeout_s: float | None = Field(default=None, gt=0, le=3600)


class StopRequest(LifecycleRequest):
    force: bool = Field(default=False, description="Quit QEMU at once instead of ACPI powerdown.")


class ForwardInfo(_Strict):
    protocol: Literal["tcp", "udp"]
    host_address: str
    host_port: int
    guest_port: int


class NetworkInfo(_Strict):
    """Where the VM is on the network, as the server set it up."""

    type: Literal["nat", "bridge", "none"]
    mac: str | None = None
    ip: str | None = Field(default=None, description="The guest's address (CIDR), if known.")
    gateway: str | None = None
    dns: list[str] = Field(default_factory=list)
    bridge: str | None = None
    tap: str | None = None
    forwards: list[ForwardInfo] = Field(default_factory=list)


class GpuAssignment(_Strict):
    """Host devices a running VM holds (released when its QEMU exits)."""

    type: Literal["passthrough", "vgpu"]
    devices: list[str] = Field(default_factory=list, description="PCI functions bound to vfio.")
    host_drivers: dict[str, str | None] = Field(default_factory=dict)
    mdev_uuid: str | None = None
    mdev_type: str | None = None
    sysfsdev: str | None = None


class Passthrough(_Strict):
    possible: bool
    reason: str | None = None


class PciDevice(_Strict):
    address: str
    vendor_id: str
    device_id: str
    class_id: str
    class_name: str
    kind: str = Field(description="gpu, nic, storage, audio, usb, bridge, accelerator, other.")
    driver: str | None
    iommu_group: str | None
    iommu_group_members: list[str]
    passthrough: Passthrough
    in_use_by: str | None = None


class MdevType(_Strict):
    parent: str
    type: str
    name: str | None
    description: str | None
    device_api: str | None
    available_instances: int


class HostDevices(_Strict):
    iommu_enabled: bool
    vfio_pci_loaded: bool
    devices: list[PciDevice]
    mdev_types: list[MdevType]


class GuestAgentInfo(_Strict):
    """Whether qemu-ga answers in the guest (live, never stored)."""

    connected: bool = False
    version: str | None = None
    reason: str | None = Field(
        default=None, description="Why it is not connected (None while connected)."
    )
    last_error: str | None = Field(
        default=None,
        description="The last protocol violation of this VM's agent (garbage it sent, or "
        "a failure of the server's agent task), kept after it reconnects.",
    )


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
    network_info: NetworkInfo | None = None
    gpu_assignment: GpuAssignment | None = None
    guest_agent: GuestAgentInfo = Field(default_factory=GuestAgentInfo)
    security_notes: list[str] = Field(
        default_factory=list,
        description="What the VM's protections do not cover (e.g. a kernel booted directly).",
    )
    tenant: str = Field(
        default="default", description="The tenant of the API key that created the VM."
    )
    generation_id: str | None = Field(
        default=None,
        description="The VM generation id the guest sees (QEMU vmgenid); new after a "
        "restore or a fork, so the guest reseeds its RNG.",
    )
    from_snapshot: SnapshotRef | None = Field(
        default=None, description="The snapshot this VM was forked or created from."
    )
    node: str | None = Field(default=None, description="The node that runs it.")


class MigrateRequest(_Strict):
    """Where a running VM moves, keeping its RAM, devices and disk while it runs."""

    node: str | None = Field(
        default=None,
        pattern=NODE_PATTERN,
        description="The node to move to; omitted (or this node's name): a fresh QEMU "
        "process on this host (e.g. to run a newer QEMU under the guest).",
    )


class Migration(_Strict):
    """A finished live migration, with QEMU's figures for it."""

    vm: Vm
    source_node: str
    node: str
    total_time_ms: int = Field(description="From the start of the stream to its end (QEMU).")
    downtime_ms: int = Field(description="How long the guest was paused for the last pass (QEMU).")
    setup_time_ms: int = 0
    transferred_bytes: int = 0
    switchover_ms: float = Field(
        description="The server's part: from the end of the stream to the guest running again."
    )


class NodeState(StrEnum):
    UP = "up"  # its lease is alive
    DOWN = "down"  # registered once, its lease has expired


class Node(_Strict):
    """One host of the cluster, as it last described itself in etcd."""

    name: str
    url: str = Field(description="Where the other nodes reach its API (--advertise).")
    state: NodeState
    accelerator: str
    qemu_version: str
    capabilities: list[str] = Field(
        description="What it can run: kvm, uefi, secure_boot, vtpm, sev, sev_es, sev_snp, tdx."
    )
    cpus: int
    memory_mb: int
    free_vcpus: int = Field(description="vCPUs its admission budget has left.")
    free_memory_mb: int = Field(description="Memory its admission budget has left.")
    vms: int = Field(description="VMs it holds.")
    live_vms: int = Field(description="Of those, with a QEMU process.")
    updated_at: datetime


class NodeList(_Strict):
    nodes: list[Node]
    cluster: bool = Field(description="False: a single host, not in a cluster.")


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
    sha256: str | None = None
    firmware: str | None = None
    ready_marker: str | None = None
    stand_in: str | None = None


# -- snapshots, fork, hibernate (docs/snapshots.md) -----------------------------------


class SnapshotRequest(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Unique among the VM's snapshots.")
    memory: bool = Field(
        default=False,
        description="Also save RAM and device state (a running or paused VM only; a stopped "
        "VM gets a disk-only snapshot).",
    )
    wait: bool = Field(default=True, description="false: answer 202 at once.")
    timeout_s: float | None = Field(default=None, gt=0, le=3600)


class Snapshot(_Strict):
    """A complete snapshot (one still being written is never listed)."""

    name: str
    vm_id: str
    created_at: datetime
    memory: bool = Field(description="RAM and device state are saved (restore resumes them).")
    size_bytes: int = Field(
        description="Bytes on disk the snapshot holds: memory, VARS, TPM and its disk layer."
    )
    vm_state: VmState = Field(description="The VM's state when it was taken.")
    complete: bool = True


class SnapshotList(_Strict):
    snapshots: list[Snapshot]


class RestoreRequest(_Strict):
    wait: bool = Field(default=True, description="Return once the VM is back.")
    timeout_s: float | None = Field(default=None, gt=0, le=3600)


class ForkRequest(_Strict):
    """New VMs resuming from the parent's memory state, each on its own disk overlay."""

    name: str = Field(
        pattern=NAME_PATTERN, description="The child's name (count > 1: NAME-1, NAME-2, ...)."
    )
    snapshot: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="The parent's memory snapshot to fork from; omitted: an instant one.",
    )
    count: int = Field(default=1, ge=1, le=16)
    wait: bool = Field(default=False, description="Return once every child runs.")
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    ports: Literal["remap", "refuse"] = Field(
        default="remap",
        description="The parent's forwarded host ports: give each child free ones (remap, "
        "reported in network_info.forwards) or refuse the fork.",
    )
    ips: list[str] | None = Field(
        default=None,
        max_length=16,
        description="New static addresses, one per child (needed when the parent has one).",
    )

    @field_validator("ips")
    @classmethod
    def _valid_ips(cls, ips: list[str] | None) -> list[str] | None:
        for ip in ips or []:
            NetworkSpec._valid_ip(ip)
        return ips


class CreateFromSnapshotRequest(_Strict):
    """``POST /api/v1/vms`` with ``from_snapshot``: a fork kept as a spec (a template)."""

    name: str = Field(pattern=NAME_PATTERN)
    from_snapshot: SnapshotRef
    start: bool = Field(default=False, description="Resume it right away.")
    wait: bool = False
    labels: Labels = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return _check_labels(labels)


class ForkResult(_Strict):
    vms: list[Vm]


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
    VM_FAULT = "vm.fault"
    GUEST_AGENT_CONNECTED = "guest_agent.connected"
    GUEST_AGENT_DISCONNECTED = "guest_agent.disconnected"
    SNAPSHOT_STEP = "vm.snapshot"
    MIGRATION_STEP = "vm.migration"


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


class Capability(_Strict):
    """One thing the host can or cannot do, and why."""

    available: bool
    reason: str = Field(description="Why not when unavailable; what provides it when available.")


class CapabilityMap(_Strict):
    uefi: Capability
    secure_boot: Capability
    vtpm: Capability
    sev: Capability
    sev_es: Capability
    sev_snp: Capability
    tdx: Capability
    iommu: Capability
    vfio: Capability


class FirmwareSet(_Strict):
    """A boot firmware this host has, found from QEMU's firmware descriptors."""

    kind: Literal["bios", "uefi", "uefi-secure-boot", "confidential"]
    description: str
    device: Literal["builtin", "flash", "memory"] = Field(
        description="builtin: QEMU's SeaBIOS; flash: pflash CODE + per-VM VARS; memory: -bios."
    )
    code: str | None = None
    vars_template: str | None = None
    features: list[str] = Field(default_factory=list)
    descriptor: str | None = Field(default=None, description="The descriptor JSON it came from.")


class SevCapabilities(_Strict):
    """From QMP ``query-sev-capabilities``."""

    cbitpos: int
    reduced_phys_bits: int


class HostCapabilities(_Strict):
    """What an agent may ask for on this host, probed at start-up (and on demand)."""

    qemu_version: str
    accelerator: str
    accelerator_reason: str
    cpu_model: str
    cpu_count: int
    cpu_cores: int | None
    memory_bytes: int
    swtpm_version: str | None
    qemu_types: list[str] = Field(
        description="Confidential-computing and TPM object types this QEMU build has."
    )
    sev: SevCapabilities | None
    firmware: list[FirmwareSet]
    capabilities: CapabilityMap
    probed_at: datetime
