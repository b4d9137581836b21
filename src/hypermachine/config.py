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

_REPO_IMAGES = Path(__file__).resolve().parents[2] / "images"


class ConfigError(ValueError):
    """A setting has a wrong name, type or value."""


def default_data_dir() -> Path:
    """The per-user data directory (XDG), used when nothing else is configured."""
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
    # Scripts that drive VMs wait for boots; requests may lower this, never raise it.
    script_timeout_s: float = 300.0
    idempotency_ttl_s: float = 24 * 3600.0
    log_level: str = "INFO"

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
_PATH_FIELDS = {"data_dir", "run_dir", "compile_cache_dir", "catalogue_file", "builtin_images_dir"}


def _coerce(name: str, raw: Any) -> Any:
    default = _FIELDS[name].default
    if name in _PATH_FIELDS:
        return Path(str(raw)).expanduser()
    if name == "accelerator":
        if raw not in ("auto", "kvm", "tcg"):
            raise ConfigError(f"accelerator must be auto, kvm or tcg, not {raw!r}")
        return raw
    try:
        if isinstance(default, bool):
            return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
        if isinstance(default, int):
            return int(raw)
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
