"""What a client asks for: a VM's spec (network, GPU, cloud-init, security, display)
and the requests of its lifecycle and console."""

from __future__ import annotations

import base64
import ipaddress
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .base import _MAX_LABELS, NAME_PATTERN, NODE_PATTERN, _check_labels, _Strict
from .host import FirmwareKind

__all__ = [
    "CloudInitSpec",
    "ConsoleToken",
    "ConsoleTokenRequest",
    "CreateVmRequest",
    "DisplaySpec",
    "GpuSpec",
    "Labels",
    "LifecycleRequest",
    "MemoryEncryption",
    "NetworkSpec",
    "PortForward",
    "RestartPolicy",
    "SecuritySpec",
    "SnapshotRef",
    "StopRequest",
    "VmSpec",
]


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


RestartPolicy = Literal["never", "on_node_failure"]


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
    restart_policy: RestartPolicy = Field(
        default="never",
        description="on_node_failure: when its node goes down, one surviving node boots it "
        "again (its files are on the cluster's shared storage).",
    )

    @model_validator(mode="after")
    def _restart_fits_devices(self) -> VmSpec:
        if self.restart_policy == "on_node_failure" and self.gpu.enabled:
            raise ValueError(
                "restart_policy 'on_node_failure' cannot take a GPU (a device of one host)"
            )
        return self

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

    def firmware_kind(self) -> FirmwareKind | None:
        """The kind of host firmware set this VM boots from; None while ``firmware`` is
        left to the image and security asks for nothing that decides it."""
        if self.security.memory_encryption != "none":
            return "confidential"
        if self.security.secure_boot:
            return "uefi-secure-boot"
        return self.firmware

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
