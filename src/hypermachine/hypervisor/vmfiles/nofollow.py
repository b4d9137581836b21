"""File I/O the server does in folders the QEMU user owns, never through a symlink.

A VM's folders belong to the QEMU user while the server (root) still writes the
cloud-init seed and the VARS copy there, reads and rotates the console log and
QEMU's own log, and reads pidfiles. A path-based ``open`` would follow a symlink
the QEMU user planted (``console.log -> /etc/shadow``), so here:

* the folder is opened once with ``O_DIRECTORY | O_NOFOLLOW`` (its parent belongs
  to the server, so the QEMU user cannot swap the folder itself);
* every file is opened relative to that descriptor with ``O_NOFOLLOW`` and
  ``O_NONBLOCK`` (a planted FIFO cannot block the server) and must be a regular
  file, else :class:`NotRegularFile`;
* a file is *written* as a fresh one (whatever had the name is unlinked, the new
  file is created ``O_EXCL``) and renamed into place, so a symlink at the target
  is replaced, never written through;
* a folder inside is reached the same way (:meth:`Folder.sub`), one name at a time,
  so a folder the user swapped for a symlink to a host folder is refused, and a tree
  is removed through descriptors (:meth:`Folder.remove`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

__all__ = ["Folder", "NotRegularFile", "exists", "read_file", "write_file"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegularFile(OSError):
    """The name is a symlink, FIFO, socket, device or folder: the server won't open it."""


class Folder:
    """An open directory whose files are reached only through its descriptor."""

    def __init__(self, path: Path, *, parent: Folder | None = None) -> None:
        """Open ``path`` (with ``parent``: its last name, inside that folder).

        Raises:
            NotRegularFile: it is a symlink or not a folder. FileNotFoundError, OSError.
        """
        self.path = path
        try:
            if parent is None:
                self.fd = os.open(path, _DIR_FLAGS)
            else:
                self.fd = os.open(path.name, _DIR_FLAGS, dir_fd=parent.fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise NotRegularFile(err.errno, "not a plain folder", str(path)) from err
            raise

    def __enter__(self) -> Folder:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        os.close(self.fd)

    def open(self, name: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> BinaryIO:
        """``name`` in this folder, if it is a regular file (not a symlink to one).

        Raises:
            NotRegularFile, FileNotFoundError, OSError.
        """
        where = str(self.path / name)
        try:
            fd = os.open(name, flags | _FILE_FLAGS, mode, dir_fd=self.fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                raise NotRegularFile(err.errno, "not a regular file", where) from err
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NotRegularFile(errno.EINVAL, "not a regular file", where)
        os.set_blocking(fd, True)
        if flags & os.O_RDWR:
            return os.fdopen(fd, "r+b")
        if flags & os.O_WRONLY:
            return os.fdopen(fd, "ab" if flags & os.O_APPEND else "wb")
        return os.fdopen(fd, "rb")

    def create(self, name: str, mode: int = 0o600) -> BinaryIO:
        """A new, empty ``name``: whatever had that name (file, symlink) is removed first."""
        self.unlink(name)
        return self.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)

    def unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def replace(self, source: str, target: str) -> None:
        """Rename ``source`` to ``target`` (a symlink at ``target`` is replaced, not followed)."""
        os.replace(source, target, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def exists(self, name: str) -> bool:
        """Whether anything has this name (a symlink counts; it is not followed)."""
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def write(self, name: str, data: bytes, mode: int = 0o600) -> None:
        """Write ``name`` atomically: a fresh partial file, renamed over the old one."""
        partial = name + ".partial"
        with self.create(partial, mode) as f:
            f.write(data)
        self.replace(partial, name)

    def read(self, name: str, limit: int) -> bytes:
        """The first ``limit`` bytes of the regular file ``name``.

        Raises:
            NotRegularFile, FileNotFoundError, OSError.
        """
        with self.open(name) as f:
            return f.read(limit)

    def sub(self, name: str) -> Folder:
        """The folder ``name`` in this one (not through a symlink).

        Raises:
            NotRegularFile, FileNotFoundError, OSError.
        """
        return Folder(self.path / name, parent=self)

    def mkdir(self, name: str, mode: int = 0o700) -> None:
        """Create the folder ``name``; one that is already a plain folder is kept.

        Raises:
            NotRegularFile: the name is taken by something else (a symlink...).
        """
        try:
            os.mkdir(name, mode, dir_fd=self.fd)
        except FileExistsError as err:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                where = str(self.path / name)
                raise NotRegularFile(errno.EEXIST, "not a plain folder", where) from err

    def remove(self, name: str) -> None:
        """Remove ``name``: a folder with all it holds (walked through descriptors),
        anything else (a symlink is removed, not followed) unlinked; gone already is fine."""
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=self.fd)
        else:
            self.unlink(name)

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def link(self, name: str, into: Folder, new_name: str) -> None:
        """Hard-link the regular file ``name`` into the folder ``into``.

        Raises:
            NotRegularFile, FileNotFoundError, OSError.
        """
        if not stat.S_ISREG(self.lstat(name).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", str(self.path / name))
        # A symlink swapped in after the check is linked as the symlink (never its
        # target), and every later open refuses it.
        os.link(name, new_name, src_dir_fd=self.fd, dst_dir_fd=into.fd, follow_symlinks=False)


def read_file(path: Path, limit: int | None = None) -> bytes:
    """At most ``limit`` bytes of a regular file (the last ones when it is longer).

    Raises:
        NotRegularFile, FileNotFoundError, OSError.
    """
    with Folder(path.parent) as folder, folder.open(path.name) as f:
        if limit is not None:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - limit))
        return f.read()


def write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` atomically, replacing (never following) whatever has its name."""
    with Folder(path.parent) as folder:
        folder.write(path.name, data, mode)


def exists(path: Path) -> bool:
    with Folder(path.parent) as folder:
        return folder.exists(path.name)
