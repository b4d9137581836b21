"""Where one VM's files live: its disk and logs under the data dir, its sockets
and pidfile under the short runtime dir (unix socket paths are capped at 108 bytes).
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from ...config import ConfigError

__all__ = ["VmPaths", "claim_server_dir"]

_SOCKET_PATH_MAX = 107


def claim_server_dir(path: Path) -> None:
    """Create ``path`` (0700) for the server, or check an existing one is the server's.

    The runtime dir's default lives under a shared root (``/tmp`` for a non-root
    server), where another user could create it first and plant symlinks; so an
    existing folder must be a real directory of the server's user that nobody else
    may write.

    Raises:
        ConfigError: it exists but is not the server's (owner, mode, a symlink).
    """
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        path.mkdir(mode=0o700, parents=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a directory (a symlink?); refusing to use it")
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"{path} belongs to uid {st.st_uid}, not to the server's user (uid {os.geteuid()});"
            " refusing to use it"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o}); refusing to use it"
        )


@dataclass(frozen=True)
class VmPaths:
    vm_dir: Path
    run_dir: Path

    @classmethod
    def for_vm(cls, vms_dir: Path, runtime_dir: Path, vm_id: str) -> VmPaths:
        return cls(vm_dir=vms_dir / vm_id, run_dir=runtime_dir / vm_id)

    @property
    def disk(self) -> Path:
        return self.vm_dir / "disk.qcow2"

    @property
    def console_log(self) -> Path:
        return self.vm_dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.vm_dir / "qemu.log"

    @property
    def seed_iso(self) -> Path:
        """The NoCloud seed (cloud-init), rewritten at each start when the VM has one."""
        return self.vm_dir / "seed.iso"

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def serial_socket(self) -> Path:
        return self.run_dir / "serial.sock"

    @property
    def qga_socket(self) -> Path:
        """The host end of the guest agent's virtio-serial channel."""
        return self.run_dir / "qga.sock"

    @property
    def vnc_socket(self) -> Path:
        """QEMU's VNC server (a VM with a display); the server proxies browsers to it."""
        return self.run_dir / "vnc.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"

    def make(self) -> None:
        """Create both folders (private to the server's user)."""
        for folder in (self.vm_dir, self.run_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        sockets = (self.qmp_socket, self.serial_socket, self.qga_socket, self.vnc_socket)
        longest = max(len(str(p)) for p in sockets)
        if longest > _SOCKET_PATH_MAX:
            raise ValueError(f"runtime dir {self.run_dir} is too long for unix sockets")

    def clear_runtime(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def remove(self) -> None:
        self.clear_runtime()
        shutil.rmtree(self.vm_dir, ignore_errors=True)
