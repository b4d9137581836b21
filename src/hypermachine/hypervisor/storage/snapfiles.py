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
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...models import Snapshot, VmState

__all__ = [
    "Resume",
    "SnapshotDir",
    "allocated_bytes",
    "clear_partial",
    "copy_platform",
    "list_snapshots",
    "snapshot_dir",
]

_META = "meta.json"
_MEMORY = "memory.bin"
_VARS = "efivars.fd"
_TPM = "tpm"


@dataclass(frozen=True)
class SnapshotDir:
    """One snapshot's folder (published, or still partial)."""

    path: Path

    @property
    def memory(self) -> Path:
        return self.path / _MEMORY

    @property
    def name(self) -> str:
        return self.path.name.removeprefix(".partial-")

    def write_meta(self, snapshot: Snapshot, layer: str) -> None:
        doc = {"snapshot": snapshot.model_dump(mode="json"), "layer": layer}
        (self.path / _META).write_text(json.dumps(doc))

    def meta(self) -> tuple[Snapshot, str]:
        """The snapshot and the name of its frozen disk layer."""
        doc = json.loads((self.path / _META).read_text())
        return Snapshot.model_validate(doc["snapshot"]), str(doc["layer"])

    def publish(self) -> SnapshotDir:
        """Rename the partial folder to its listed name."""
        final = self.path.with_name(self.name)
        self.path.rename(final)
        return SnapshotDir(final)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _root(vm_dir: Path) -> Path:
    return vm_dir / "snapshots"


def snapshot_dir(vm_dir: Path, name: str, *, partial: bool = False) -> SnapshotDir:
    root = _root(vm_dir)
    return SnapshotDir(root / (f".partial-{name}" if partial else name))


def list_snapshots(vm_dir: Path) -> Iterator[SnapshotDir]:
    """The published snapshots, oldest first."""
    root = _root(vm_dir)
    if not root.is_dir():
        return
    found = [
        SnapshotDir(p)
        for p in root.iterdir()
        if not p.name.startswith(".") and (p / _META).exists()
    ]
    yield from sorted(found, key=lambda d: (d.path / _META).stat().st_mtime_ns)


def clear_partial(vm_dir: Path) -> None:
    """Remove what an interrupted snapshot or hibernation left half-written."""
    for folder in (_root(vm_dir), vm_dir):
        if folder.is_dir():
            for path in folder.glob(".partial-*"):
                shutil.rmtree(path, ignore_errors=True)


def copy_platform(vm_dir: Path, tpm_dir: Path, target: Path, *, to_vm: bool = False) -> None:
    """Copy the VM's UEFI VARS and its vTPM state (``tpm_dir``, the one in use) into
    ``target`` (or back, ``to_vm``)."""
    for name, own in ((_VARS, vm_dir / _VARS), (_TPM, tpm_dir)):
        source, dest = (target / name, own) if to_vm else (own, target / name)
        if source.is_dir():
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(source, dest)
        elif source.is_file():
            shutil.copyfile(source, dest)


@dataclass(frozen=True)
class Resume:
    """The RAM a VM resumes at its next start (hibernation, a fork, a restore)."""

    path: Path

    @classmethod
    def of(cls, vm_dir: Path, *, partial: bool = False) -> Resume:
        return cls(vm_dir / (".partial-resume" if partial else "resume"))

    @property
    def memory(self) -> Path:
        return self.path / _MEMORY

    @property
    def exists(self) -> bool:
        return (self.path / "state.json").exists()

    def write_state(self, vm_state: VmState, mac: str | None) -> None:
        """What the guest was (running/paused) and the MAC it knows (a fork's child
        then gives its NIC its own)."""
        doc = {"vm_state": vm_state.value, "mac": mac}
        (self.path / "state.json").write_text(json.dumps(doc))

    def state(self) -> tuple[VmState, str | None]:
        doc = json.loads((self.path / "state.json").read_text())
        return VmState(doc["vm_state"]), doc.get("mac")

    def publish(self) -> Resume:
        final = Resume.of(self.path.parent)
        final.discard()
        self.path.rename(final.path)
        return final

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def allocated_bytes(paths: Iterable[Path]) -> int:
    """Bytes allocated on disk by the files under ``paths``, each inode counted once (a
    layer hard-linked into a fork counts once per tenant)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top in paths:
        if not top.exists():
            continue
        walk = [(str(top.parent), [], [top.name])] if top.is_file() else os.walk(top)
        for root, _dirs, files in walk:
            for name in files:
                st = os.lstat(os.path.join(root, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total
