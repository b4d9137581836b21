"""One user's search permission on a folder, as a POSIX ACL entry (``u:USER:--x``).

When the server runs as root with a data dir under a private folder (a 0700
``mktemp -d``, pytest's tmp dirs, a home), QEMU's user cannot pass through the
folders above its files. Rather than loosening their modes for everyone, the
server adds one access-ACL entry for that user with only the search bit — what
``setfacl -m u:hypermachine-qemu:x DIR`` does: the user may pass through the
folder, not list it or create files in it, and nobody else gains anything.

The entry is written with ``os.setxattr`` in the kernel's ``system.posix_acl_access``
format (no ``acl`` package or subprocess): a version header, then entries of
(tag, permissions, id), ordered by tag and id. Existing entries are kept; the mask
gains the search bit (without it the new entry would be masked off).
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

__all__ = ["decode", "encode", "grant_search", "grants_search", "with_search"]

_XATTR = "system.posix_acl_access"
_VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
_UNDEFINED_ID = 0xFFFFFFFF

USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_SEARCH = 0o1

Entry = tuple[int, int, int]  # (tag, permission bits rwx, id)


def decode(data: bytes) -> list[Entry]:
    """The entries of an xattr value.

    Raises:
        ValueError: not a version-2 POSIX ACL.
    """
    if len(data) < _HEADER.size or (len(data) - _HEADER.size) % _ENTRY.size:
        raise ValueError("not a POSIX ACL")
    (version,) = _HEADER.unpack_from(data)
    if version != _VERSION:
        raise ValueError(f"POSIX ACL version {version}, not {_VERSION}")
    return [
        _ENTRY.unpack_from(data, offset) for offset in range(_HEADER.size, len(data), _ENTRY.size)
    ]


def encode(entries: list[Entry]) -> bytes:
    ordered = sorted(entries, key=lambda e: (e[0], e[2]))
    return _HEADER.pack(_VERSION) + b"".join(_ENTRY.pack(*e) for e in ordered)


def _from_mode(mode: int) -> list[Entry]:
    return [
        (USER_OBJ, (mode >> 6) & 7, _UNDEFINED_ID),
        (GROUP_OBJ, (mode >> 3) & 7, _UNDEFINED_ID),
        (OTHER, mode & 7, _UNDEFINED_ID),
    ]


def with_search(entries: list[Entry], uid: int) -> list[Entry]:
    """``entries`` plus search permission for ``uid`` (its entry and the mask)."""
    kept = [e for e in entries if not (e[0] == USER and e[2] == uid) and e[0] != MASK]
    own = next((e[1] for e in entries if e[0] == USER and e[2] == uid), 0)
    group = next(e[1] for e in entries if e[0] == GROUP_OBJ)
    mask = next((e[1] for e in entries if e[0] == MASK), group)
    return [*kept, (USER, own | _SEARCH, uid), (MASK, mask | _SEARCH, _UNDEFINED_ID)]


def _entries(folder: Path) -> list[Entry] | None:
    try:
        return decode(os.getxattr(folder, _XATTR, follow_symlinks=False))
    except OSError as err:
        if err.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return None
        raise


def grants_search(folder: Path, uid: int) -> bool:
    """Whether ``folder``'s ACL has a search entry for ``uid`` that its mask lets through."""
    entries = _entries(folder) or []
    own = next((e[1] for e in entries if e[0] == USER and e[2] == uid), 0)
    mask = next((e[1] for e in entries if e[0] == MASK), 0)
    return bool(own & mask & _SEARCH)


def grant_search(folder: Path, uid: int) -> None:
    """Let ``uid`` pass through ``folder`` (an ACL entry; the folder's mode is otherwise kept).

    Raises:
        OSError: the file system refuses ACLs (``EOPNOTSUPP``) or the change.
    """
    entries = _entries(folder) or _from_mode(os.lstat(folder).st_mode)
    os.setxattr(folder, _XATTR, encode(with_search(entries, uid)), follow_symlinks=False)
