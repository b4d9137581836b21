"""Settings: defaults < TOML file < ``HM_*`` environment < command-line flags.

Every outside wait has a named budget here. Unknown keys in the file or the
environment are an error, not silently dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["BridgeConfig", "ConfigError", "Settings", "default_data_dir", "load_settings"]

Accelerator = Literal["auto", "kvm", "tcg"]
AuthSetting = Literal["auto", "keys", "open"]

_REPO_IMAGES = Path(__file__).resolve().parents[2] / "images"


class ConfigError(ValueError):
    """A setting has a wrong name, type or value."""


def default_data_dir() -> Path:
    """The per-user data directory (XDG), used when nothing else is configured.

    As root it is ``/var/lib/hypermachine``: QEMU then runs as an unprivileged user,
    which must be able to reach the VM folders (root's home is private).
    """
    if os.geteuid() == 0 and "XDG_DATA_HOME" not in os.environ:
        return Path("/var/lib/hypermachine")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hypermachine"


def _default_run_root() -> Path:
    if os.geteuid() == 0:
        return Path("/run/hypermachine")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "hypermachine"
    return Path("/tmp") / f"hypermachine-{os.geteuid()}"


_IFACE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_URL = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?/?$"
)
_NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


@dataclass(frozen=True)
class BridgeConfig:
    """A host bridge VMs may join (``[bridges.NAME]`` with ``subnet`` and ``gateway``)."""

    name: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told; built only through :func:`load_settings`."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=default_data_dir)
    # Short-path directory for sockets and pidfiles (unix socket paths are limited
    # to 108 bytes); empty means derived from data_dir.
    run_dir: Path | None = None
    # Compiled-module cache (Wasmtime); empty means <data_dir>/cache.
    compile_cache_dir: Path | None = None
    accelerator: Accelerator = "auto"
    qemu_binary: str = "qemu-system-x86_64"
    qemu_img_binary: str = "qemu-img"
    swtpm_binary: str = "swtpm"
    swtpm_setup_binary: str = "swtpm_setup"
    catalogue_file: Path = _REPO_IMAGES / "catalogue.toml"
    builtin_images_dir: Path = _REPO_IMAGES
    qmp_connect_timeout_s: float = 10.0
    stop_timeout_s: float = 30.0
    kill_grace_s: float = 5.0
    wait_timeout_max_s: float = 600.0
    # The host capability probe (a short-lived QEMU answering qom-list-types etc.).
    host_probe_timeout_s: float = 30.0
    # swtpm_setup creating a VM's TPM state (EK + platform certificates), and swtpm
    # starting up to its control socket.
    swtpm_setup_timeout_s: float = 60.0
    swtpm_start_timeout_s: float = 10.0
    max_body_bytes: int = 2 * 1024 * 1024
    max_concurrent_scripts: int = 4
    # One tenant's share of those slots, so no tenant can take every one.
    max_scripts_per_tenant: int = 2
    # Scripts that drive VMs wait for boots; requests may lower this, never raise it.
    script_timeout_s: float = 300.0
    idempotency_ttl_s: float = 24 * 3600.0
    log_level: str = "INFO"
    # Guest agent (qemu-ga over virtio-serial): docs/guest.md
    guest_agent_sync_timeout_s: float = 3.0
    guest_agent_command_timeout_s: float = 30.0
    guest_agent_ping_interval_s: float = 5.0
    guest_agent_retry_s: float = 1.0
    # The longest line the agent may send: above qemu-ga's largest reply (guest-exec-status
    # carries up to 16 MiB of output per stream, base64: 4/3 of that, twice).
    guest_agent_max_line_bytes: int = 48 * 1024 * 1024
    exec_timeout_default_s: float = 300.0
    exec_timeout_max_s: float = 24 * 3600.0
    exec_poll_max_s: float = 0.5
    exec_output_max_bytes: int = 1024 * 1024
    exec_retained_per_vm: int = 64
    file_max_bytes: int = 32 * 1024 * 1024
    file_chunk_bytes: int = 256 * 1024
    # Serial console log rotation
    console_log_max_bytes: int = 4 * 1024 * 1024
    console_log_check_s: float = 10.0
    # A console token (a browser's ?token= for a console websocket) is good this long.
    console_token_ttl_s: float = 30.0
    # Event log
    events_retained: int = 100_000
    sse_keepalive_s: float = 15.0
    # Networks and devices (docs/networking.md). Bridges VMs may join, by name.
    bridges: tuple[BridgeConfig, ...] = ()
    # Web pages from these origins (besides loopback ones) may open a console or
    # speak MCP; in open mode, requests naming these hosts are served (docs/threat-model.md).
    allowed_origins: tuple[str, ...] = ()
    # Host address port forwards of nat VMs listen on, and the host ports allowed.
    forward_address: str = "127.0.0.1"
    forward_port_min: int = 1024
    forward_port_max: int = 65535
    # Where PCI devices, IOMMU groups and mediated devices are read and bound.
    sysfs_root: Path = Path("/sys")
    # PCI addresses a VM's gpu.device may name besides display devices (class 0x03xx)
    # and their IOMMU-group companions, e.g. ["0000:05:00.0"] (docs/threat-model.md).
    passthrough_allow: tuple[str, ...] = ()
    ip_binary: str = "ip"
    # A NAT VM's network process, and the tool installing the VM network rules
    # (docs/networking.md).
    passt_binary: str = "passt"
    nft_binary: str = "nft"
    # Budget for one host command (ip link) and for one sysfs bind/unbind step.
    host_command_timeout_s: float = 10.0
    # -- security and limits (docs/threat-model.md) --
    # auto: open only with no API key ever created and a loopback bind; keys: always
    # require a key; open: never (the explicit opt-out for a non-loopback bind).
    auth: AuthSetting = "auto"
    # Requests per minute per key, and live VMs per tenant, by tier; 0 = unlimited.
    rate_limit_free: int = 60
    rate_limit_pro: int = 600
    rate_limit_enterprise: int = 0
    vm_quota_free: int = 5
    vm_quota_pro: int = 50
    vm_quota_enterprise: int = 0
    # Disk a tenant's VMs may hold (disks, snapshots, hibernation images), MiB; 0 = unlimited.
    storage_quota_mb_free: int = 20 * 1024
    storage_quota_mb_pro: int = 200 * 1024
    storage_quota_mb_enterprise: int = 0
    # Host admission: live VMs' memory may reach this share of host RAM, their vCPUs
    # this multiple of host CPUs; one VM may have at most max_vcpus_per_vm (0 = host CPUs).
    memory_overcommit_ratio: float = 1.0
    cpu_overcommit_ratio: float = 4.0
    max_vcpus_per_vm: int = 0
    # When the server runs as root, QEMU runs as this system user ("auto": the user
    # hypermachine-qemu, created on first start; "" or "root": no privilege drop).
    qemu_user: str = "auto"
    # Hypercorn: seconds a connection may go without sending anything (0 = no limit,
    # the default: hypercorn applies it to whole connections, so it would cut event
    # streams, console websockets and long exec waits); idle keep-alives close anyway.
    http_read_timeout_s: int = 0
    http_keep_alive_timeout_s: float = 5.0
    # Snapshots (docs/snapshots.md): the budget of one save or restore of RAM, and QEMU's
    # migration bandwidth cap while it writes RAM to a file (its 128 MiB/s default makes
    # 1 GiB take 8 s).
    snapshot_timeout_s: float = 300.0
    migration_bandwidth_mib_s: int = 64 * 1024
    # Restores kept ready: a paused QEMU holding a memory snapshot's RAM, so restoring it
    # is a switch-over (docs/snapshots.md). It holds the VM's memory once more, within
    # the host's budget (a VM start that needs the room drops standbys); made this long
    # after the snapshot or restore, so it does not compete with the guest's first steps.
    snapshot_standby: bool = True
    snapshot_standby_after_s: float = 1.0
    # Live migration (docs/cluster.md): the budget of one, stream and switch-over.
    migration_timeout_s: float = 300.0
    # This host's name among the nodes of a cluster ("": the host name).
    node: str = ""
    # The cluster (docs/cluster.md): etcd's client URLs, comma-separated ("": a single
    # host, no cluster); the URL other nodes reach this one's API at; the node's lease
    # (it is "down" this long after its last renewal); each etcd request's budget.
    etcd: str = ""
    advertise: str = ""
    node_lease_ttl_s: int = 10
    etcd_timeout_s: float = 5.0
    # The secret every node of the cluster shares (a file, >= 32 bytes): it signs
    # requests one node forwards to another. None: this node forwards nothing.
    cluster_secret_file: Path | None = None
    # Storage every node sees at this same path (an NFS mount): the files of VMs whose
    # restart_policy is on_node_failure live here, so a surviving node can boot them.
    # None: this node creates no such VM and takes over none.
    shared_storage_dir: Path | None = None

    @property
    def node_name(self) -> str:
        """This node's name: ``node``, or the host name made a valid node name."""
        if self.node:
            return self.node
        name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:63]
        return name.strip("-") or "localhost"

    @property
    def etcd_urls(self) -> list[str]:
        return [url.strip() for url in self.etcd.split(",") if url.strip()]

    @property
    def vms_dir(self) -> Path:
        return self.data_dir / "vms"

    @property
    def shared_vms_dir(self) -> Path | None:
        """Where shared-storage VMs' folders live (one per VM, as under ``vms_dir``)."""
        return self.shared_storage_dir / "vms" if self.shared_storage_dir is not None else None

    @property
    def database_file(self) -> Path:
        return self.data_dir / "hypermachine.sqlite3"

    @property
    def cache_dir(self) -> Path:
        return self.compile_cache_dir or self.data_dir / "cache"

    @property
    def images_store_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def qemu_folders(self) -> list[Path]:
        """The folders QEMU (and swtpm) open files in: the QEMU user must reach them."""
        folders = [self.vms_dir, self.runtime_dir, self.builtin_images_dir, self.images_store_dir]
        return folders if self.shared_vms_dir is None else [*folders, self.shared_vms_dir]

    @property
    def runtime_dir(self) -> Path:
        """Where per-VM sockets live: one folder per data dir, so servers never collide."""
        if self.run_dir is not None:
            return self.run_dir
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:10]
        return _default_run_root() / digest


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_CHOICES = {"accelerator": ("auto", "kvm", "tcg"), "auth": ("auto", "keys", "open")}
_PATH_FIELDS = {
    "data_dir",
    "run_dir",
    "compile_cache_dir",
    "catalogue_file",
    "builtin_images_dir",
    "sysfs_root",
    "cluster_secret_file",
    "shared_storage_dir",
}


def _bridge(name: str, raw: Any) -> BridgeConfig:
    if not _IFACE_NAME.match(name):
        raise ConfigError(f"bridge name {name!r} is not an interface name (<= 15 of A-Za-z0-9_.-)")
    if not isinstance(raw, Mapping) or set(raw) - {"subnet", "gateway"} or "subnet" not in raw:
        raise ConfigError(f"bridges.{name} takes subnet (CIDR) and optionally gateway")
    try:
        subnet = ipaddress.IPv4Network(str(raw["subnet"]))
        gateway = ipaddress.IPv4Address(str(raw["gateway"])) if raw.get("gateway") else None
    except ValueError as err:
        raise ConfigError(f"bridges.{name}: {err}") from err
    hosts = (subnet.network_address, subnet.broadcast_address)
    if gateway is not None and (gateway not in subnet or gateway in hosts):
        raise ConfigError(f"bridges.{name}: gateway {gateway} is not a host of {subnet}")
    return BridgeConfig(name=name, subnet=subnet, gateway=gateway)


def _bridges(raw: Any) -> tuple[BridgeConfig, ...]:
    """``{name: {subnet, gateway}}`` from TOML, or the same as JSON (``HM_BRIDGES``)."""
    if isinstance(raw, tuple) and all(isinstance(b, BridgeConfig) for b in raw):
        return raw
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError as err:
            raise ConfigError(f"bridges: not JSON: {err}") from err
    if not isinstance(raw, Mapping):
        raise ConfigError("bridges must map bridge names to {subnet, gateway}")
    return tuple(_bridge(str(name), value) for name, value in raw.items())


def _address(raw: Any) -> str:
    try:
        return str(ipaddress.IPv4Address(str(raw)))
    except ValueError as err:
        raise ConfigError(f"forward_address must be an IPv4 address: {err}") from err


_ORIGIN = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)


def _origins(raw: Any) -> tuple[str, ...]:
    """A TOML list, or comma-separated text (``HM_ALLOWED_ORIGINS``), of ``scheme://host[:port]``."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    origins = tuple(str(item).strip().rstrip("/").lower() for item in items if str(item).strip())
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise ConfigError(f"allowed_origins: {origin!r} is not scheme://host[:port]")
    return origins


def _pci_addresses(raw: Any) -> tuple[str, ...]:
    """A TOML list, or a comma-separated string (``HM_PASSTHROUGH_ALLOW``)."""
    if isinstance(raw, str):
        raw = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list | tuple):
        raise ConfigError("passthrough_allow must be a list of PCI addresses")
    wrong = [str(a) for a in raw if not isinstance(a, str) or not _PCI_ADDRESS.match(a)]
    if wrong:
        raise ConfigError(
            f"passthrough_allow: not a PCI address (0000:05:00.0): {', '.join(wrong)}"
        )
    return tuple(raw)


def _coerce(name: str, raw: Any) -> Any:
    default = _FIELDS[name].default
    if name in _PATH_FIELDS:
        return Path(str(raw)).expanduser()
    if name == "bridges":
        return _bridges(raw)
    if name == "passthrough_allow":
        return _pci_addresses(raw)
    if name == "forward_address":
        return _address(raw)
    if name == "allowed_origins":
        return _origins(raw)
    if name == "etcd":
        urls = [url.strip() for url in str(raw).split(",") if url.strip()]
        for url in urls:
            if not _URL.match(url):
                raise ConfigError(f"etcd: {url!r} is not http(s)://host:port")
        return ",".join(urls)
    if name == "advertise":
        if raw and not _URL.match(str(raw)):
            raise ConfigError(f"advertise: {raw!r} is not http(s)://host:port")
        return str(raw).rstrip("/")
    if name == "node_lease_ttl_s" and not (str(raw).isdigit() and 2 <= int(raw) <= 300):
        raise ConfigError(f"node_lease_ttl_s must be 2-300 s, not {raw!r}")
    if name == "node":
        if raw and not _NODE_NAME.match(str(raw)):
            raise ConfigError(f"node must be a DNS label (a-z, 0-9, -), not {raw!r}")
        return str(raw)
    if name in ("forward_port_min", "forward_port_max"):
        if not str(raw).isdigit() or not 1 <= int(raw) <= 65535:
            raise ConfigError(f"{name} must be a port number (1-65535), not {raw!r}")
        return int(raw)
    if name in _CHOICES:
        if raw not in _CHOICES[name]:
            raise ConfigError(f"{name} must be one of {', '.join(_CHOICES[name])}, not {raw!r}")
        return raw
    try:
        if isinstance(default, bool):
            return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
        if isinstance(default, int):
            number = int(raw)
            if number < 0:
                raise ConfigError(f"{name} must not be negative, not {raw!r}")
            return number
        if isinstance(default, float):
            value = float(raw)
            if value <= 0:
                raise ConfigError(f"{name} must be positive, not {raw!r}")
            return value
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from err
    return str(raw)


def _check_names(source: str, names: Mapping[str, Any]) -> None:
    unknown = sorted(set(names) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s) in {source}: {', '.join(unknown)}")


# HM_* variables that are not server settings: the settings file, and the client's.
_NOT_SETTINGS = frozenset({"HM_CONFIG", "HM_SERVER", "HM_API_KEY"})


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge the sources in order; later ones win.

    Raises:
        ConfigError: an unknown key or a value of the wrong shape.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file is None and environ.get("HM_CONFIG"):
        config_file = Path(environ["HM_CONFIG"])
    if config_file is not None:
        try:
            from_file = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read {config_file}: {err}") from err
        _check_names(str(config_file), from_file)
        values.update(from_file)
    from_env = {
        key[3:].lower(): value
        for key, value in environ.items()
        if key.startswith("HM_") and key not in _NOT_SETTINGS
    }
    _check_names("the HM_* environment", from_env)
    values.update(from_env)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    _check_names("the command line", values)
    settings = Settings(**{name: _coerce(name, raw) for name, raw in values.items()})
    if settings.forward_port_min > settings.forward_port_max:
        raise ConfigError("forward_port_min is above forward_port_max")
    if settings.etcd and not (settings.node and settings.advertise):
        raise ConfigError("a cluster node (etcd) needs its node name and advertise URL")
    return settings
