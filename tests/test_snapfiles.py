"""Snapshot files in a VM's folder, which belongs to the QEMU user: what a QEMU taken
over by its guest can plant there (symlinks to host files and folders, FIFOs, hostile
names) is never followed, written through, handed to QEMU or waited on by the server,
which runs as root. Each test plants one thing and checks the host file it aims at."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hypermachine.errors import HypervisorError
from hypermachine.hypervisor.storage import layers, snapfiles
from hypermachine.hypervisor.storage.snapfiles import Resume
from hypermachine.models import Snapshot, VmState
from hypermachine.store import utcnow

SECRET = b"root's secret, never the guest's\n"


@pytest.fixture
def host_file(tmp_path: Path) -> Path:
    """A file outside every VM folder, standing for /etc/shadow."""
    path = tmp_path / "host" / "shadow"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def vm_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "vms" / "vm-1"
    folder.mkdir(parents=True)
    return folder


def _snapshot(
    vm_dir: Path, name: str = "s1", *, memory: bytes = b"stream"
) -> snapfiles.SnapshotDir:
    folder = snapfiles.snapshot_dir(vm_dir, name, partial=True)
    folder.make()
    stub = Snapshot(name=name, vm_id="vm-1", created_at=utcnow(), memory=True, size_bytes=0,
                    vm_state=VmState.RUNNING)  # fmt: skip
    folder.write_meta(stub, layer=layers.FIRST)
    with folder.new_memory() as f:
        f.write(memory)
    return folder.publish()


def test_restoring_vars_replaces_a_planted_symlink_instead_of_writing_through_it(
    vm_dir: Path, host_file: Path
) -> None:
    snapshot = _snapshot(vm_dir)
    with snapshot.folder() as here:
        here.write("efivars.fd", b"the snapshot's VARS")
    (vm_dir / "efivars.fd").symlink_to(host_file)
    snapfiles.copy_platform(vm_dir, vm_dir / "tpm", snapshot, to_vm=True)
    assert host_file.read_bytes() == SECRET
    assert not (vm_dir / "efivars.fd").is_symlink()
    assert (vm_dir / "efivars.fd").read_bytes() == b"the snapshot's VARS"


def test_a_symlink_in_the_tpm_state_is_not_copied_as_its_target(
    vm_dir: Path, host_file: Path
) -> None:
    snapshot = _snapshot(vm_dir)
    (vm_dir / "tpm").mkdir()
    (vm_dir / "tpm" / "tpm2-00.permall").write_bytes(b"tpm state")
    (vm_dir / "tpm" / "stolen").symlink_to(host_file)
    snapfiles.copy_platform(vm_dir, vm_dir / "tpm", snapshot)
    copied = snapshot.path / "tpm"
    assert sorted(p.name for p in copied.iterdir()) == ["tpm2-00.permall"]
    assert (copied / "tpm2-00.permall").read_bytes() == b"tpm state"


def test_vars_planted_in_a_snapshot_as_a_symlink_is_refused(vm_dir: Path, host_file: Path) -> None:
    """Back into the VM it would hand the guest's QEMU a host file's bytes."""
    snapshot = _snapshot(vm_dir)
    (snapshot.path / "efivars.fd").symlink_to(host_file)
    (vm_dir / "efivars.fd").write_bytes(b"the VM's VARS")
    with pytest.raises(HypervisorError, match=r"efivars\.fd"):
        snapfiles.copy_platform(vm_dir, vm_dir / "tpm", snapshot, to_vm=True)
    assert (vm_dir / "efivars.fd").read_bytes() == b"the VM's VARS"


def test_a_snapshots_folder_swapped_for_a_symlink_is_neither_listed_nor_removed_through(
    vm_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "host-dir"
    (outside / "s1").mkdir(parents=True)
    (outside / "s1" / "meta.json").write_text(json.dumps({"snapshot": {}, "layer": ""}))
    (vm_dir / "snapshots").symlink_to(outside)
    folder = snapfiles.snapshot_dir(vm_dir, "s1")
    assert list(snapfiles.list_snapshots(vm_dir)) == []
    assert not folder.exists
    folder.remove()
    snapfiles.clear_partial(vm_dir)
    assert (outside / "s1" / "meta.json").exists()
    with pytest.raises(HypervisorError, match="not followed"):
        snapfiles.snapshot_dir(vm_dir, "s2", partial=True).make()
    assert sorted(p.name for p in outside.iterdir()) == ["s1"]


def test_a_partial_folder_planted_as_a_symlink_is_replaced_not_written_into(
    vm_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "host-dir"
    outside.mkdir()
    (vm_dir / "snapshots").mkdir()
    (vm_dir / "snapshots" / ".partial-s1").symlink_to(outside)
    _snapshot(vm_dir, memory=b"the guest's RAM")
    assert list(outside.iterdir()) == []
    assert [d.name for d in snapfiles.list_snapshots(vm_dir)] == ["s1"]


def test_a_ram_file_planted_as_a_symlink_is_never_opened_for_qemu(
    vm_dir: Path, host_file: Path
) -> None:
    """QEMU would get a descriptor of the host file the server (root) opened."""
    snapshot = _snapshot(vm_dir)
    (snapshot.path / "memory.bin").unlink()
    (snapshot.path / "memory.bin").symlink_to(host_file)
    with pytest.raises(HypervisorError, match=r"memory\.bin"), snapshot.open_memory():
        pass
    staged = Resume.of(vm_dir, partial=True)
    staged.make()
    with pytest.raises(HypervisorError, match=r"memory\.bin"):
        snapshot.link_memory(staged)
    assert not (staged.path / "memory.bin").exists()


def test_a_fifo_as_meta_or_state_does_not_hang_the_server(vm_dir: Path) -> None:
    snapshot = _snapshot(vm_dir)
    (snapshot.path / "meta.json").unlink()
    os.mkfifo(snapshot.path / "meta.json")
    with pytest.raises(HypervisorError, match=r"meta\.json"):
        snapshot.meta()
    resume = Resume.of(vm_dir)
    resume.make()
    os.mkfifo(resume.path / "state.json")
    assert not resume.exists
    with pytest.raises(HypervisorError, match=r"state\.json"):
        resume.state()


def test_a_state_file_planted_as_a_symlink_is_not_read(vm_dir: Path, host_file: Path) -> None:
    resume = Resume.of(vm_dir)
    resume.make()
    (resume.path / "state.json").symlink_to(host_file)
    with pytest.raises(HypervisorError, match=r"state\.json"):
        resume.state()


@pytest.mark.parametrize("layer", ["../../host/shadow", "/etc/passwd", "disk.qcow2", 7])
def test_a_meta_file_naming_no_layer_of_the_vm_is_refused(vm_dir: Path, layer: object) -> None:
    snapshot = _snapshot(vm_dir)
    doc = json.loads((snapshot.path / "meta.json").read_text())
    doc["layer"] = layer
    (snapshot.path / "meta.json").write_text(json.dumps(doc))
    with pytest.raises(HypervisorError, match="no disk layer"):
        snapshot.meta()


def test_the_top_link_pointing_out_of_the_folder_is_refused(vm_dir: Path) -> None:
    (vm_dir / layers.TOP).symlink_to("../../host/shadow")
    with pytest.raises(HypervisorError, match="not to a disk layer"):
        layers.current(vm_dir)


def test_a_layer_swapped_for_a_symlink_is_not_hard_linked_into_a_fork(
    vm_dir: Path, host_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap lands between the chain's walk and the link (the walk stands in for it
    with a stale answer): the host file's inode must not appear in the child's folder."""
    (vm_dir / layers.FIRST).symlink_to(host_file)
    monkeypatch.setattr(layers, "chain", lambda _dir, _name: [layers.FIRST])
    child = tmp_path / "vms" / "vm-2"
    with pytest.raises(OSError, match="not a regular file"):
        layers.link_chain(vm_dir, layers.FIRST, child)
    assert host_file.stat().st_nlink == 1
    assert list(child.iterdir()) == []


def test_snapshot_bytes_do_not_count_a_host_folder_behind_a_symlink(
    vm_dir: Path, tmp_path: Path
) -> None:
    snapshot = _snapshot(vm_dir, memory=b"x" * 100_000)
    alone = snapfiles.snapshot_bytes(snapshot, "")
    big = tmp_path / "host-big"
    big.mkdir()
    (big / "data").write_bytes(os.urandom(1_000_000))
    (snapshot.path / "elsewhere").symlink_to(big)
    assert snapfiles.snapshot_bytes(snapshot, "") == alone
    assert snapfiles.allocated_bytes([vm_dir]) == alone
