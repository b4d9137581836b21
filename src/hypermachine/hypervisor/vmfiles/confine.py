"""Who QEMU runs as: an unprivileged system user when the server runs as root.

QEMU is started *as* that user (``subprocess.Popen(user=, group=, extra_groups=)``),
never with ``-runas``: the seccomp sandbox's ``elevateprivileges=deny`` kills a
QEMU that changes its own ids (see docs/threat-model.md). Its supplementary groups
are set explicitly (only ``kvm`` when that group exists), so none of root's leak.

swtpm and swtpm_setup run as the same user (see :mod:`.tpm`). A root server never
runs them as root by itself: the folders QEMU needs are made reachable to that
user (:func:`make_reachable`, an ACL entry for it alone) or the server refuses to
start; only ``qemu_user = ""`` keeps them root.

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

from ...config import ConfigError
from . import acl, nofollow

__all__ = [
    "DEFAULT_QEMU_USER",
    "QemuIdentity",
    "make_reachable",
    "resolve_qemu_identity",
    "unprivileged_identity",
]

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
        """Give ``folders`` and everything in them to this user; folders become 0700.

        The walk goes through directory descriptors and changes symlinks themselves,
        so a symlink the user planted (even swapped in during the walk) never hands
        it a file outside; a file with other hard links is left alone.
        """
        for folder in folders:
            for _, dirs, files, fd in os.fwalk(folder, follow_symlinks=False):
                for name in (*dirs, *files):
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                        log.warning("not handing over %s/%s: it has other links", folder, name)
                        continue
                    os.chown(name, self.uid, self.gid, dir_fd=fd, follow_symlinks=False)
            with nofollow.Folder(folder) as top:
                os.fchown(top.fd, self.uid, self.gid)
                os.fchmod(top.fd, 0o700)


def _can_traverse(folder: Path, identity: QemuIdentity) -> bool:
    """Whether the mode bits, or an ACL entry for it, let ``identity`` search ``folder``."""
    if acl.grants_search(folder, identity.uid):
        return True
    st = folder.stat()
    if st.st_uid == identity.uid:
        bit = stat.S_IXUSR
    elif st.st_gid in {identity.gid, *identity.groups}:
        bit = stat.S_IXGRP
    else:
        bit = stat.S_IXOTH
    return bool(st.st_mode & bit)


def _reaches(folder: Path, identity: QemuIdentity) -> bool:
    """Asked of the kernel: can a process of ``identity`` search ``folder``?"""
    check = subprocess.run(["test", "-x", str(folder)], check=False, **identity.popen_kwargs())
    return check.returncode == 0


def make_reachable(identity: QemuIdentity, folders: list[Path]) -> None:
    """Let ``identity`` reach ``folders``: search permission (an ACL entry for that user
    alone, see :mod:`.acl`) on each folder above them that denies it, then check as
    that user that the grant worked. Missing folders are skipped (the server creates
    them, traversable).

    Raises:
        ConfigError: a folder could not be opened to the user; nothing falls back to root.
    """
    for target in folders:
        if not target.exists():
            continue
        resolved = target.resolve()
        granted = False
        for folder in reversed([resolved, *resolved.parents]):
            if _can_traverse(folder, identity):
                continue
            granted = True
            log.info("granting %s search permission on %s (ACL)", identity.name, folder)
            try:
                acl.grant_search(folder, identity.uid)
            except OSError as err:
                raise ConfigError(
                    f"the QEMU user {identity.name} cannot reach {target}: {folder} lacks "
                    f"search permission for it, and adding an ACL entry failed "
                    f"({err.strerror}); use a data dir it can reach (e.g. /var/lib/hypermachine)"
                    ' or set qemu_user = "" to run QEMU as root'
                ) from err
        if granted and not _reaches(target, identity):
            raise ConfigError(
                f"the QEMU user {identity.name} still cannot reach {target}; use a data dir "
                'it can reach (e.g. /var/lib/hypermachine) or set qemu_user = "" to run QEMU '
                "as root"
            )


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
    """The identity QEMU (and swtpm) run as, or None for the server's own.

    ``setting`` is ``qemu_user``: ``auto`` uses (and creates) :data:`DEFAULT_QEMU_USER`
    when the server runs as root; a name uses that existing user; ``""`` or ``root``
    keeps QEMU as root (the explicit opt-out). ``must_reach`` are the folders QEMU
    opens files in: they are made reachable to that user (:func:`make_reachable`).
    A root server never falls back to running QEMU as root by itself.

    Raises:
        ConfigError: the user cannot be found/created, or cannot be given the folders.
    """
    if os.geteuid() != 0 or setting in ("", "root"):
        return None
    auto = setting == "auto"
    identity = _identity(DEFAULT_QEMU_USER if auto else setting, create=auto)
    make_reachable(identity, must_reach)
    return identity


def unprivileged_identity() -> QemuIdentity:
    """The default QEMU user (created if missing), for a helper that must never run as
    root even when QEMU does (passt, see docs/networking.md).

    Raises:
        ConfigError: the user cannot be created.
    """
    return _identity(DEFAULT_QEMU_USER, create=True)
