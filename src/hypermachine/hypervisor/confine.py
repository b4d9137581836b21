"""Who QEMU runs as: an unprivileged system user when the server runs as root.

QEMU is started *as* that user (``subprocess.Popen(user=, group=, extra_groups=)``),
never with ``-runas``: the seccomp sandbox's ``elevateprivileges=deny`` kills a
QEMU that changes its own ids (see docs/threat-model.md). Its supplementary groups
are set explicitly (only ``kvm`` when that group exists), so none of root's leak.

Each VM's folders are handed to that user (mode 0700) just before launch, so QEMU
can write its console log, pidfile and serial socket and open its overlay disk;
the QMP socket is bound afterwards by the server, stays root's (mode 0600), and
QEMU only ever sees its already-listening file descriptor.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError

__all__ = ["DEFAULT_QEMU_USER", "QemuIdentity", "resolve_qemu_identity", "unprivileged_identity"]

log = logging.getLogger(__name__)

DEFAULT_QEMU_USER = "hypermachine-qemu"


@dataclass(frozen=True)
class QemuIdentity:
    """The user, group and supplementary groups a QEMU process runs with."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def popen_kwargs(self) -> dict[str, Any]:
        return {
            "user": self.uid,
            "group": self.gid,
            "extra_groups": list(self.groups),
            "umask": 0o077,
        }

    def own(self, *folders: Path) -> None:
        """Give ``folders`` and everything in them to this user; folders become 0700."""
        for folder in folders:
            for root, dirs, files in os.walk(folder):
                for name in (*dirs, *files):
                    os.chown(Path(root) / name, self.uid, self.gid, follow_symlinks=False)
            os.chown(folder, self.uid, self.gid)
            folder.chmod(0o700)


def _can_traverse(path: Path, identity: QemuIdentity) -> bool:
    """Whether ``identity`` can reach ``path`` (execute permission on every ancestor)."""
    groups = {identity.gid, *identity.groups}
    for folder in [path, *path.parents]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            continue  # created later by the server, with a traversable mode
        if st.st_uid == identity.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _create_user(name: str) -> None:
    log.info("creating the system user %s for QEMU", name)
    try:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        raise ConfigError(
            f"cannot create the QEMU user {name!r}: {err} {detail.decode(errors='replace')}"
        ) from err


def _identity(name: str, *, create: bool) -> QemuIdentity:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if not create:
            raise ConfigError(f"qemu_user {name!r} does not exist") from None
        _create_user(name)
        entry = pwd.getpwnam(name)
    groups: tuple[int, ...] = ()
    with contextlib.suppress(KeyError):
        groups = (grp.getgrnam("kvm").gr_gid,)
    return QemuIdentity(name=name, uid=entry.pw_uid, gid=entry.pw_gid, groups=groups)


def resolve_qemu_identity(setting: str, must_reach: list[Path]) -> QemuIdentity | None:
    """The identity QEMU runs as, or None for the server's own.

    ``setting`` is ``qemu_user``: ``auto`` uses (and creates) :data:`DEFAULT_QEMU_USER`
    when the server runs as root; a name uses that existing user; ``""`` or ``root``
    keeps QEMU as root. ``must_reach`` are the folders QEMU opens files in.

    With ``auto``, folders that user cannot reach (e.g. a data dir under a private
    home) make QEMU run as root, with a warning; with an explicit name they are an
    error.

    Raises:
        ConfigError: the user cannot be found/created, or (explicit name) cannot reach
            the folders.
    """
    if os.geteuid() != 0 or setting in ("", "root"):
        return None
    auto = setting == "auto"
    identity = _identity(DEFAULT_QEMU_USER if auto else setting, create=auto)
    blocked = [str(p) for p in must_reach if not _can_traverse(p, identity)]
    if not blocked:
        return identity
    message = (
        f"the QEMU user {identity.name} cannot reach {', '.join(blocked)} "
        "(a parent folder lacks search permission)"
    )
    if not auto:
        raise ConfigError(message)
    log.warning("%s: QEMU will run as root; use a data dir like /var/lib/hypermachine", message)
    return None


def unprivileged_identity() -> QemuIdentity:
    """The default QEMU user (created if missing), for a helper that must never run as
    root even when QEMU does (passt, see docs/networking.md).

    Raises:
        ConfigError: the user cannot be created.
    """
    return _identity(DEFAULT_QEMU_USER, create=True)
