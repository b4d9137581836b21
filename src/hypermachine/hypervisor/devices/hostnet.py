"""The host side of VM networks: tap devices on bridges, and free host ports.

QEMU's bridge helper cannot run under the seccomp sandbox's ``spawn=deny``, so
the server makes each bridge VM's tap itself (``ip tuntap add``, owned by the
QEMU user) before QEMU starts, and deletes it after QEMU exits. The server also
opens it (:func:`open_tap`) and hands QEMU the descriptor (``-netdev tap,fd=``),
as libvirt does: QEMU never needs ``/dev/net/tun``, which may be root's alone.
Names and bridges come only from the server's own derivation and configuration,
never from a client.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
from pathlib import Path

import trio

from ...errors import HypervisorError

__all__ = ["TapManager", "interface_exists", "is_bridge", "open_tap", "port_free"]

log = logging.getLogger(__name__)


_TUNSETIFF = 0x400454CA
_IFF_TAP, _IFF_NO_PI, _IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


def open_tap(name: str) -> int:
    """A descriptor attached to the existing tap ``name``, for QEMU to inherit.

    Raises:
        HypervisorError: ``/dev/net/tun`` cannot be opened or the tap attached.
    """
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise HypervisorError(f"cannot open /dev/net/tun: {err.strerror}") from err
    request = struct.pack("16sH22x", name.encode(), _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, request)
    except OSError as err:
        os.close(fd)
        raise HypervisorError(f"cannot attach to tap {name}: {err.strerror}", tap=name) from err
    return fd


def interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def is_bridge(sysfs_root: Path, name: str) -> bool:
    return (sysfs_root / "class" / "net" / name / "bridge").is_dir()


def port_free(address: str, port: int, protocol: str) -> bool:
    """Whether QEMU could listen on ``address:port`` now (it, too, sets SO_REUSEADDR)."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise HypervisorError(f"cannot probe {address}:{port}: {err.strerror}") from err
    return True


class TapManager:
    """Creates and deletes tap devices with iproute2, each step within ``timeout_s``."""

    def __init__(self, ip_binary: str, timeout_s: float, owner_uid: int | None = None) -> None:
        self._ip = ip_binary
        self._timeout_s = timeout_s
        # The tap belongs to whoever runs QEMU, so QEMU may open it without privileges.
        self._owner = os.geteuid() if owner_uid is None else owner_uid

    async def _ip_cmd(self, *args: str) -> None:
        argv = [self._ip, *args]
        try:
            with trio.fail_after(self._timeout_s):
                done = await trio.run_process(
                    argv, capture_stdout=True, capture_stderr=True, check=False
                )
        except trio.TooSlowError as err:
            raise HypervisorError(
                f"{' '.join(argv)} took longer than {self._timeout_s:g} s"
            ) from err
        except OSError as err:
            raise HypervisorError(f"cannot run {self._ip}: {err.strerror}") from err
        if done.returncode != 0:
            raise HypervisorError(
                f"{' '.join(argv)} failed", stderr=done.stderr.decode(errors="replace").strip()
            )

    async def create(self, tap: str, bridge: str) -> None:
        """A fresh tap on ``bridge``, up (a stale one of the same name is replaced).

        Raises:
            HypervisorError: iproute2 refused (no CAP_NET_ADMIN, bridge gone, …).
        """
        await self.remove(tap)
        await self._ip_cmd("tuntap", "add", "dev", tap, "mode", "tap", "user", str(self._owner))
        try:
            await self._ip_cmd("link", "set", "dev", tap, "master", bridge, "up")
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.remove(tap)
            raise
        log.info("tap %s created on bridge %s", tap, bridge)

    async def remove(self, tap: str) -> None:
        """Delete the tap if it exists; failures are logged, not raised."""
        if not interface_exists(tap):
            return
        try:
            await self._ip_cmd("link", "del", "dev", tap)
        except HypervisorError as err:
            if interface_exists(tap):  # else someone else just deleted it: fine
                log.error("could not delete tap %s: %s %s", tap, err.message, err.details)
            return
        log.info("tap %s deleted", tap)
