"""Where snapshots and saved RAM live in a VM's folder, written so a half-written one
never shows.

    <vm dir>/snapshots/<name>/meta.json     what the snapshot is (written last)
                             /memory.bin    the RAM + device state stream (memory snapshots)
                             /efivars.fd    the UEFI variable store, when the VM has one
                             /tpm/          the vTPM state, when the VM has one
    <vm dir>/snapshots/.partial-<name>/     a snapshot being written (never listed)
    <vm dir>/resume/memory.bin + state.json the RAM a hibernated (or freshly forked) VM
                                            resumes at its next start

Everything is first written under a dot-name and renamed into place (one ``rename``),
so a server killed half-way leaves only a dot-folder, which :func:`clear_partial`
removes at the next start. The disk side of a snapshot is a frozen layer of the VM's
chain (layers.py), named in ``meta.json``.

The VM's folder and all it holds belong to the QEMU user, so every name is reached
from the folder's descriptor one at a time, never through a symlink
(:mod:`..vmfiles.nofollow`). A ``snapshots`` swapped for a link to a host folder, an
``efivars.fd -> /etc/shadow`` or a FIFO as ``meta.json`` fail the operation
(:class:`~..errors.VmFilesDamaged`, 409, naming the file); they are never followed,
written through, handed to QEMU or waited on. RAM files are passed to QEMU as
descriptors the server opened this way.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ...errors import HypervisorError, VmFilesDamaged
from ...models import Snapshot, VmState
from ..vmfiles import nofollow
from . import layers

__all__ = [
    "Resume",
    "SnapshotDir",
    "StateFolder",
    "allocated_bytes",
    "clear_partial",
    "copy_platform",
    "list_snapshots",
    "partial_snapshots",
    "snapshot_bytes",
    "snapshot_dir",
]

_ROOT = "snapshots"
_PARTIAL = ".partial-"
_META = "meta.json"
_STATE = "state.json"
_MEMORY = "memory.bin"
_VARS = "efivars.fd"
_TPM = "tpm"
_JSON_LIMIT = 64 * 1024
_PLATFORM_FILE_LIMIT = 64 * 2**20  # a VARS store is a few MiB; swtpm's files less


def _untrusted(err: OSError, what: Path) -> VmFilesDamaged:
    return VmFilesDamaged(
        f"{what} cannot be used: {err.strerror or err} (the VM's folder belongs to the QEMU "
        "user; it is not followed)",
        path=str(what),
    )


@dataclass(frozen=True)
class StateFolder:
    """A folder of saved state inside a VM's folder, ``parts`` the names down to it."""

    vm_dir: Path
    parts: tuple[str, ...]

    @property
    def path(self) -> Path:
        return self.vm_dir.joinpath(*self.parts)

    @contextmanager
    def folder(self) -> Iterator[nofollow.Folder]:
        """The folder, opened name by name from the VM's.

        Raises:
            HypervisorError: a name on the way is not a plain folder. FileNotFoundError.
        """
        with self._parent() as parent:
            if not self.parts:
                yield parent
                return
            try:
                here = parent.sub(self.parts[-1])
            except nofollow.NotRegularFile as err:
                raise _untrusted(err, self.path) from err
            with here:
                yield here

    @contextmanager
    def _parent(self, *, make: bool = False) -> Iterator[nofollow.Folder]:
        """The folder holding this one (the VM's own for ``parts`` of one name or none);
        with ``make``, the folders on the way are created."""
        with ExitStack() as stack:
            try:
                here = stack.enter_context(nofollow.Folder(self.vm_dir))
                for part in self.parts[:-1]:
                    if make:
                        here.mkdir(part)
                    here = stack.enter_context(here.sub(part))
            except nofollow.NotRegularFile as err:
                raise _untrusted(err, self.path) from err
            yield here

    @property
    def taken(self) -> bool:
        """Whether anything has its name (a symlink counts)."""
        try:
            with self._parent() as parent:
                return parent.exists(self.parts[-1])
        except (OSError, HypervisorError):
            return False

    def make(self) -> None:
        """Create it afresh and empty (whatever had its name is removed first)."""
        with self._parent(make=True) as parent:
            parent.remove(self.parts[-1])
            parent.mkdir(self.parts[-1])

    def remove(self) -> None:
        """Remove it and all it holds (nothing outside: no symlink is followed)."""
        try:
            with self._parent() as parent:
                parent.remove(self.parts[-1])
        except (FileNotFoundError, HypervisorError):
            pass  # no such folder here, or a path that leaves it: nothing of ours to remove

    def _rename(self, new_name: str) -> None:
        with self._parent() as parent:
            parent.replace(self.parts[-1], new_name)

    def _has(self, name: str) -> bool:
        try:
            with self.folder() as here:
                return stat.S_ISREG(here.lstat(name).st_mode)
        except (OSError, HypervisorError):
            return False

    def _read_json(self, name: str) -> dict[str, object]:
        """Raises: HypervisorError (not a regular file, not JSON), FileNotFoundError."""
        with self.folder() as here:
            try:
                raw = here.read(name, _JSON_LIMIT)
            except nofollow.NotRegularFile as err:
                raise _untrusted(err, self.path / name) from err
        try:
            doc = json.loads(raw)
        except ValueError as err:
            raise VmFilesDamaged(f"{self.path / name} is not JSON: {err}") from err
        if not isinstance(doc, dict):
            raise VmFilesDamaged(f"{self.path / name} is not a JSON object")
        return doc

    def _write_json(self, name: str, doc: dict[str, object]) -> None:
        with self.folder() as here:
            here.write(name, json.dumps(doc).encode())

    # -- the RAM file: handed to QEMU as a descriptor -------------------------------

    @contextmanager
    def new_memory(self) -> Iterator[BinaryIO]:
        """A fresh, empty RAM file to write (``O_EXCL``: never a planted name)."""
        with self.folder() as here, here.create(_MEMORY) as f:
            yield f

    @contextmanager
    def open_memory(self) -> Iterator[BinaryIO]:
        """The RAM file to read.

        Raises:
            HypervisorError: it is not a regular file. FileNotFoundError.
        """
        with self.folder() as here:
            try:
                f = here.open(_MEMORY)
            except nofollow.NotRegularFile as err:
                raise _untrusted(err, self.path / _MEMORY) from err
            with f:
                yield f

    def memory_size(self) -> int:
        with self.folder() as here:
            return here.lstat(_MEMORY).st_size

    def link_memory(self, into: StateFolder) -> None:
        """Hard-link this RAM file into ``into`` (a fork's or a restore's resume image).

        Raises:
            HypervisorError: it is not a regular file.
        """
        with self.folder() as here, into.folder() as there:
            try:
                here.link(_MEMORY, there, _MEMORY)
            except nofollow.NotRegularFile as err:
                raise _untrusted(err, self.path / _MEMORY) from err


@dataclass(frozen=True)
class SnapshotDir(StateFolder):
    """One snapshot's folder (published, or still partial)."""

    @property
    def name(self) -> str:
        return self.parts[-1].removeprefix(_PARTIAL)

    @property
    def exists(self) -> bool:
        return self._has(_META)

    def write_meta(self, snapshot: Snapshot, layer: str) -> None:
        self._write_json(_META, {"snapshot": snapshot.model_dump(mode="json"), "layer": layer})

    def meta(self) -> tuple[Snapshot, str]:
        """The snapshot and the name of its frozen disk layer.

        Raises:
            HypervisorError: ``meta.json`` is not a regular file or not a snapshot's.
            FileNotFoundError.
        """
        doc = self._read_json(_META)
        try:
            snapshot, layer = Snapshot.model_validate(doc["snapshot"]), doc["layer"]
        except (KeyError, ValueError) as err:
            raise VmFilesDamaged(f"{self.path / _META} is not a snapshot's: {err}") from err
        if not (layer == "" or (isinstance(layer, str) and layers.is_layer(layer))):
            raise VmFilesDamaged(f"{self.path / _META} names no disk layer of the VM's")
        return snapshot, layer

    def publish(self) -> SnapshotDir:
        """Rename the partial folder to its listed name."""
        self._rename(self.name)
        return snapshot_dir(self.vm_dir, self.name)

    def mtime_ns(self) -> int:
        with self.folder() as here:
            return here.lstat(_META).st_mtime_ns

    def files(self) -> list[str]:
        """Its regular files, as paths inside it (no symlink followed, none listed)."""
        with self.folder() as here:
            found: list[str] = []
            for top, _dirs, names, fd in os.fwalk(".", dir_fd=here.fd, follow_symlinks=False):
                for name in names:
                    if stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        found.append(os.path.normpath(os.path.join(top, name)))
            return sorted(found)


def snapshot_dir(vm_dir: Path, name: str, *, partial: bool = False) -> SnapshotDir:
    return SnapshotDir(vm_dir, (_ROOT, f"{_PARTIAL}{name}" if partial else name))


def list_snapshots(vm_dir: Path) -> Iterator[SnapshotDir]:
    """The published snapshots, oldest first (none when ``snapshots`` is not a plain
    folder)."""
    try:
        with nofollow.Folder(vm_dir) as vm, vm.sub(_ROOT) as root:
            names = [name for name in root.names() if not name.startswith(".")]
    except (OSError, HypervisorError):
        return
    found = [snapshot_dir(vm_dir, name) for name in names]
    timed = []
    for folder in found:
        try:
            timed.append((folder.mtime_ns(), folder))
        except (OSError, HypervisorError):
            continue  # no meta.json (or not a folder): not a snapshot
    yield from (folder for _, folder in sorted(timed, key=lambda pair: pair[0]))


def partial_snapshots(vm_dir: Path) -> list[SnapshotDir]:
    """The snapshots being written when the server stopped."""
    try:
        with nofollow.Folder(vm_dir) as vm, vm.sub(_ROOT) as root:
            names = [name for name in root.names() if name.startswith(_PARTIAL)]
    except (OSError, HypervisorError):
        return []
    return [SnapshotDir(vm_dir, (_ROOT, name)) for name in sorted(names)]


def clear_partial(vm_dir: Path) -> None:
    """Remove what an interrupted snapshot or hibernation left half-written."""
    for parts in ((_ROOT,), ()):
        try:
            with StateFolder(vm_dir, parts).folder() as here:
                for name in here.names():
                    if name.startswith(_PARTIAL):
                        here.remove(name)
        except (OSError, HypervisorError):
            continue


def _copy_file(source: nofollow.Folder, dest: nofollow.Folder, name: str, dest_name: str) -> None:
    """Copy the regular file ``name`` (if there is one) to a fresh ``dest_name``; one
    larger than a platform file can be (grown by the QEMU user) is refused, not cut."""
    try:
        data = source.read(name, _PLATFORM_FILE_LIMIT + 1)
    except FileNotFoundError:
        return
    if len(data) > _PLATFORM_FILE_LIMIT:
        where = source.path / name
        raise VmFilesDamaged(
            f"{where} is larger than {_PLATFORM_FILE_LIMIT >> 20} MiB: not a platform file",
            path=str(where),
        )
    dest.write(dest_name, data)


def _copy_flat(source: nofollow.Folder, name: str, dest: nofollow.Folder, dest_name: str) -> None:
    """Replace the folder ``dest_name`` by a copy of the regular files of ``name`` (if
    there is such a folder; swtpm's state is flat, anything else in it is skipped)."""
    try:
        origin = source.sub(name)
    except FileNotFoundError:
        return
    with origin:
        dest.remove(dest_name)
        dest.mkdir(dest_name)
        with dest.sub(dest_name) as copy:
            for entry in origin.names():
                if stat.S_ISREG(origin.lstat(entry).st_mode):
                    _copy_file(origin, copy, entry, entry)


def copy_platform(vm_dir: Path, tpm_dir: Path, target: SnapshotDir, *, to_vm: bool = False) -> None:
    """Copy the VM's UEFI VARS and its vTPM state (``tpm_dir``, the one in use, a folder
    of ``vm_dir``) into the snapshot ``target`` (or back, ``to_vm``). Only regular files
    are copied, each written fresh: no symlink on either side is followed.

    Raises:
        HypervisorError: a name on the way is not what it should be.
    """
    if tpm_dir.parent != vm_dir:
        raise ValueError(f"not a TPM state dir of {vm_dir}: {tpm_dir}")
    with StateFolder(vm_dir, ()).folder() as vm, target.folder() as snapshot:
        try:
            if to_vm:
                _copy_file(snapshot, vm, _VARS, _VARS)
                _copy_flat(snapshot, _TPM, vm, tpm_dir.name)
            else:
                _copy_file(vm, snapshot, _VARS, _VARS)
                _copy_flat(vm, tpm_dir.name, snapshot, _TPM)
        except nofollow.NotRegularFile as err:
            raise _untrusted(err, Path(err.filename or vm_dir)) from err


@dataclass(frozen=True)
class Resume(StateFolder):
    """The RAM a VM resumes at its next start (hibernation, a fork, a restore)."""

    @classmethod
    def of(cls, vm_dir: Path, *, partial: bool = False) -> Resume:
        return cls(vm_dir, (".partial-resume" if partial else "resume",))

    @property
    def exists(self) -> bool:
        return self._has(_STATE)

    def write_state(self, vm_state: VmState, mac: str | None) -> None:
        """What the guest was (running/paused) and the MAC it knows (a fork's child
        then gives its NIC its own)."""
        self._write_json(_STATE, {"vm_state": vm_state.value, "mac": mac})

    def state(self) -> tuple[VmState, str | None]:
        """Raises: HypervisorError (not a resume image's), FileNotFoundError."""
        doc = self._read_json(_STATE)
        mac = doc.get("mac")
        try:
            return VmState(str(doc["vm_state"])), mac if isinstance(mac, str) else None
        except (KeyError, ValueError) as err:
            raise VmFilesDamaged(f"{self.path / _STATE} is not a resume image's") from err

    def publish(self) -> Resume:
        final = Resume.of(self.vm_dir)
        final.discard()
        self._rename(final.parts[-1])
        return final

    def discard(self) -> None:
        self.remove()


class _Allocation:
    """Bytes allocated on disk by regular files, each inode counted once (a layer
    hard-linked into a fork counts once per tenant). No symlink is followed."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()
        self.total = 0

    def add(self, st: os.stat_result) -> None:
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in self._seen:
            self._seen.add((st.st_dev, st.st_ino))
            self.total += st.st_blocks * 512

    def walk(self, top: str | Path, dir_fd: int | None = None) -> None:
        """Everything under the folder ``top`` (or ``top`` itself, if it is a file)."""
        try:
            st = os.stat(top, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return
        if not stat.S_ISDIR(st.st_mode):
            self.add(st)
            return
        for _root, _dirs, files, fd in os.fwalk(top, dir_fd=dir_fd, follow_symlinks=False):
            for name in files:
                self.add(os.stat(name, dir_fd=fd, follow_symlinks=False))


def allocated_bytes(paths: Iterable[Path]) -> int:
    """Bytes allocated on disk by the files under ``paths`` (VM folders), each inode
    counted once; a symlink is not followed."""
    allocation = _Allocation()
    for top in paths:
        allocation.walk(top)
    return allocation.total


def snapshot_bytes(folder: SnapshotDir, layer: str) -> int:
    """What a snapshot holds on disk: its folder and its frozen disk layer."""
    allocation = _Allocation()
    with StateFolder(folder.vm_dir, ()).folder() as vm, folder.folder() as here:
        allocation.walk(".", dir_fd=here.fd)
        if layer:
            allocation.walk(layer, dir_fd=vm.fd)
    return allocation.total
