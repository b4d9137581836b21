"""Settings: defaults < TOML file < ``HM_*`` environment < command-line flags.

Every outside wait has a named budget here. Unknown keys in the file or the
environment are an error, not silently dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["ConfigError", "Settings", "default_data_dir", "load_settings"]

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
    catalogue_file: Path = _REPO_IMAGES / "catalogue.toml"
    builtin_images_dir: Path = _REPO_IMAGES
    qmp_connect_timeout_s: float = 10.0
    stop_timeout_s: float = 30.0
    kill_grace_s: float = 5.0
    wait_timeout_max_s: float = 600.0
    max_body_bytes: int = 2 * 1024 * 1024
    max_concurrent_scripts: int = 4
    # Scripts that drive VMs wait for boots; requests may lower this, never raise it.
    script_timeout_s: float = 300.0
    idempotency_ttl_s: float = 24 * 3600.0
    log_level: str = "INFO"
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
    # Host admission: live VMs' memory may reach this share of host RAM, their vCPUs
    # this multiple of host CPUs; one VM may have at most max_vcpus_per_vm (0 = host CPUs).
    memory_overcommit_ratio: float = 1.0
    cpu_overcommit_ratio: float = 4.0
    max_vcpus_per_vm: int = 0
    # When the server runs as root, QEMU runs as this system user ("auto": the user
    # hypermachine-qemu, created on first start; "" or "root": no privilege drop).
    qemu_user: str = "auto"
    # Hypercorn: how long a connection may take to send its request head / stay idle.
    http_read_timeout_s: float = 30.0
    http_keep_alive_timeout_s: float = 5.0

    @property
    def vms_dir(self) -> Path:
        return self.data_dir / "vms"

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
    def runtime_dir(self) -> Path:
        """Where per-VM sockets live: one folder per data dir, so servers never collide."""
        if self.run_dir is not None:
            return self.run_dir
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:10]
        return _default_run_root() / digest


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_CHOICES = {"accelerator": ("auto", "kvm", "tcg"), "auth": ("auto", "keys", "open")}
_PATH_FIELDS = {"data_dir", "run_dir", "compile_cache_dir", "catalogue_file", "builtin_images_dir"}


def _coerce(name: str, raw: Any) -> Any:
    default = _FIELDS[name].default
    if name in _PATH_FIELDS:
        return Path(str(raw)).expanduser()
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
        if key.startswith("HM_") and key not in ("HM_CONFIG",)
    }
    _check_names("the HM_* environment", from_env)
    values.update(from_env)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    _check_names("the command line", values)
    return Settings(**{name: _coerce(name, raw) for name, raw in values.items()})
