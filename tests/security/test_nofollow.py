"""The server never follows a symlink planted in a VM's folder (which the QEMU user owns),
and refuses a runtime dir that is not its own.

Each test plants a symlink to a file outside (in the test's tmp dir) where the server
reads or writes, and shows the outside file is neither read nor changed; or a FIFO where
it reads, and shows it does not hang. The snapshot files, passt's pidfile and log, a
migration's marker and the QMP socket were all followed before issue 14's last pass.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from hypermachine.config import ConfigError
from hypermachine.errors import HypervisorError, VmFilesDamaged
from hypermachine.hypervisor import migration
from hypermachine.hypervisor.devices import cloudinit, passt
from hypermachine.hypervisor.guest.console import rotate_at_start, rotate_if_over, tail_lines
from hypermachine.hypervisor.qemu import machine
from hypermachine.hypervisor.qemu.machine import adopt_pid, spawn_qemu
from hypermachine.hypervisor.storage import layers, snapfiles
from hypermachine.hypervisor.storage.snapfiles import Resume
from hypermachine.hypervisor.vmfiles.layout import VmPaths, claim_server_dir
from hypermachine.models import CloudInitSpec, Snapshot, Vm, VmState
from hypermachine.server import open_services
from hypermachine.store import utcnow
from support import make_settings

SECRET = b"root:$y$j9T$not-for-the-guest:19000:0:99999:7:::\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file of the host's that a hostile QEMU would like the server to read or write."""
    path = tmp_path / "outside" / "shadow"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    path.chmod(0o644)
    return path


@pytest.fixture
def paths(tmp_path: Path) -> VmPaths:
    paths = VmPaths(vm_dir=tmp_path / "vms" / "vm-1", run_dir=tmp_path / "run" / "vm-1")
    paths.make()
    return paths


def untouched(path: Path) -> bool:
    return path.read_bytes() == SECRET


def seeded_vm() -> Vm:
    now = datetime.now(UTC)
    return Vm(
        id="vm-1",
        uuid="3f2a0c4e-1111-4222-8333-444455556666",
        name="seeded",
        image="tiny",
        cloud_init=CloudInitSpec(hostname="seeded"),
        state=VmState.STOPPED,
        created_at=now,
        updated_at=now,
    )


def test_the_seed_replaces_a_planted_symlink(paths: VmPaths, outside: Path) -> None:
    paths.seed_iso.symlink_to(outside)
    paths.seed_iso.with_name("seed.iso.partial").symlink_to(outside)
    assert cloudinit.write_seed(seeded_vm(), False, paths) == paths.seed_iso
    assert untouched(outside)
    assert not paths.seed_iso.is_symlink()
    assert paths.seed_iso.read_bytes()[0x8001:0x8006] == b"CD001"  # an ISO9660 volume

    paths.seed_iso.unlink()
    paths.seed_iso.symlink_to(outside)
    no_seed = seeded_vm().model_copy(update={"cloud_init": None})
    assert cloudinit.write_seed(no_seed, False, paths) is None  # the link goes, not its target
    assert not paths.seed_iso.is_symlink() and untouched(outside)


def test_the_console_log_is_not_read_or_rotated_through_a_symlink(
    paths: VmPaths, outside: Path
) -> None:
    log = paths.console_log
    log.symlink_to(outside)
    assert tail_lines(log, 10, 1 << 20) == []  # the API's console log: not the secret
    assert not rotate_if_over(log, 1)  # not copied into console.log.1, not truncated
    assert untouched(outside) and not log.with_name("console.log.1").exists()

    rotate_at_start(log)  # a rename moves the link itself aside
    assert log.with_name("console.log.1").is_symlink() and untouched(outside)
    assert tail_lines(log, 10, 1 << 20) == []  # nor read through the rotated name

    log.with_name("console.log.1").unlink()
    log.write_bytes(b"boot line\n" * 100)
    log.with_name("console.log.1.partial").symlink_to(outside)  # where the copy goes
    assert rotate_if_over(log, 10)
    assert untouched(outside)
    assert log.with_name("console.log.1").read_bytes() == b"boot line\n" * 100


def test_qemu_log_and_pidfile_are_not_followed(paths: VmPaths, outside: Path) -> None:
    paths.qemu_log.symlink_to(outside)
    with pytest.raises(HypervisorError, match="cannot start QEMU"):
        spawn_qemu(lambda qmp, tap: ["true"], paths)  # its output would be appended there
    assert untouched(outside)

    outside.write_text(f"{os.getpid()}\n")  # a pid of a process that does run
    paths.pidfile.symlink_to(outside)
    assert adopt_pid(paths, "3f2a0c4e-1111-4222-8333-444455556666") is None


def test_a_runtime_dir_that_is_not_the_servers_is_refused(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    claim_server_dir(mine)
    assert (mine.stat().st_mode & 0o777, mine.stat().st_uid) == (0o700, os.geteuid())
    claim_server_dir(mine)  # an existing one of ours is fine

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by others"):
        claim_server_dir(shared)
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(ConfigError, match="not a directory"):
        claim_server_dir(link)
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(ConfigError, match="belongs to uid 65534"):
            claim_server_dir(theirs)


async def test_the_server_refuses_to_start_on_a_foreign_runtime_dir(
    data_dir: Path, compile_cache: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o777)
    settings = make_settings(data_dir, compile_cache, run_dir=run)
    with pytest.raises(ConfigError, match="refusing to use it"):
        async with open_services(settings):
            pass


# -- snapshot files (storage/snapfiles.py, layers.py) ------------------------------


@pytest.fixture
def vm_dir(paths: VmPaths) -> Path:
    return paths.vm_dir


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
    vm_dir: Path, outside: Path
) -> None:
    snapshot = _snapshot(vm_dir)
    with snapshot.folder() as here:
        here.write("efivars.fd", b"the snapshot's VARS")
    (vm_dir / "efivars.fd").symlink_to(outside)
    snapfiles.copy_platform(vm_dir, vm_dir / "tpm", snapshot, to_vm=True)
    assert outside.read_bytes() == SECRET
    assert not (vm_dir / "efivars.fd").is_symlink()
    assert (vm_dir / "efivars.fd").read_bytes() == b"the snapshot's VARS"


def test_a_symlink_in_the_tpm_state_is_not_copied_as_its_target(
    vm_dir: Path, outside: Path
) -> None:
    snapshot = _snapshot(vm_dir)
    (vm_dir / "tpm").mkdir()
    (vm_dir / "tpm" / "tpm2-00.permall").write_bytes(b"tpm state")
    (vm_dir / "tpm" / "stolen").symlink_to(outside)
    snapfiles.copy_platform(vm_dir, vm_dir / "tpm", snapshot)
    copied = snapshot.path / "tpm"
    assert sorted(p.name for p in copied.iterdir()) == ["tpm2-00.permall"]
    assert (copied / "tpm2-00.permall").read_bytes() == b"tpm state"


def test_vars_planted_in_a_snapshot_as_a_symlink_is_refused(vm_dir: Path, outside: Path) -> None:
    """Back into the VM it would hand the guest's QEMU a host file's bytes."""
    snapshot = _snapshot(vm_dir)
    (snapshot.path / "efivars.fd").symlink_to(outside)
    (vm_dir / "efivars.fd").write_bytes(b"the VM's VARS")
    with pytest.raises(VmFilesDamaged, match=r"efivars\.fd"):
        snapfiles.copy_platform(vm_dir, vm_dir / "tpm", snapshot, to_vm=True)
    assert (vm_dir / "efivars.fd").read_bytes() == b"the VM's VARS"


def test_a_vars_file_grown_past_any_real_one_is_refused_not_cut(vm_dir: Path) -> None:
    """A cut copy would restore a corrupt VARS store; reading it whole, root's memory."""
    snapshot = _snapshot(vm_dir)
    with open(vm_dir / "efivars.fd", "wb") as f:
        f.truncate(64 * 2**20 + 1)
    with pytest.raises(VmFilesDamaged, match=r"efivars\.fd is larger than 64 MiB"):
        snapfiles.copy_platform(vm_dir, vm_dir / "tpm", snapshot)
    assert not (snapshot.path / "efivars.fd").exists()


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
    with pytest.raises(VmFilesDamaged, match="not followed"):
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
    vm_dir: Path, outside: Path
) -> None:
    """QEMU would get a descriptor of the host file the server (root) opened."""
    snapshot = _snapshot(vm_dir)
    (snapshot.path / "memory.bin").unlink()
    (snapshot.path / "memory.bin").symlink_to(outside)
    with pytest.raises(VmFilesDamaged, match=r"memory\.bin"), snapshot.open_memory():
        pass
    staged = Resume.of(vm_dir, partial=True)
    staged.make()
    with pytest.raises(VmFilesDamaged, match=r"memory\.bin"):
        snapshot.link_memory(staged)
    assert not (staged.path / "memory.bin").exists()


def test_a_fifo_as_meta_or_state_does_not_hang_the_server(vm_dir: Path) -> None:
    snapshot = _snapshot(vm_dir)
    (snapshot.path / "meta.json").unlink()
    os.mkfifo(snapshot.path / "meta.json")
    with pytest.raises(VmFilesDamaged, match=r"meta\.json"):
        snapshot.meta()
    resume = Resume.of(vm_dir)
    resume.make()
    os.mkfifo(resume.path / "state.json")
    assert not resume.exists
    with pytest.raises(VmFilesDamaged, match=r"state\.json"):
        resume.state()


def test_a_state_file_planted_as_a_symlink_is_not_read(vm_dir: Path, outside: Path) -> None:
    resume = Resume.of(vm_dir)
    resume.make()
    (resume.path / "state.json").symlink_to(outside)
    with pytest.raises(VmFilesDamaged, match=r"state\.json"):
        resume.state()


@pytest.mark.parametrize("layer", ["../../host/shadow", "/etc/passwd", "disk.qcow2", 7])
def test_a_meta_file_naming_no_layer_of_the_vm_is_refused(vm_dir: Path, layer: object) -> None:
    snapshot = _snapshot(vm_dir)
    doc = json.loads((snapshot.path / "meta.json").read_text())
    doc["layer"] = layer
    (snapshot.path / "meta.json").write_text(json.dumps(doc))
    with pytest.raises(VmFilesDamaged, match="no disk layer"):
        snapshot.meta()


def test_the_top_link_pointing_out_of_the_folder_is_refused(vm_dir: Path) -> None:
    (vm_dir / layers.TOP).symlink_to("../../host/shadow")
    with pytest.raises(VmFilesDamaged, match="not to a disk layer"):
        layers.current(vm_dir)


def test_a_layer_swapped_for_a_symlink_is_not_hard_linked_into_a_fork(
    vm_dir: Path, outside: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap lands between the chain's walk and the link (the walk stands in for it
    with a stale answer): the host file's inode must not appear in the child's folder."""
    (vm_dir / layers.FIRST).symlink_to(outside)
    monkeypatch.setattr(layers, "chain", lambda _dir, _name: [layers.FIRST])
    child = tmp_path / "vms" / "vm-2"
    with pytest.raises(OSError, match="not a regular file"):
        layers.link_chain(vm_dir, layers.FIRST, child)
    assert outside.stat().st_nlink == 1
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


# -- passt's files, a migration's marker, the QMP socket ----------------------------


def test_passts_pidfile_planted_as_a_symlink_is_replaced_not_written_through(
    paths: VmPaths, outside: Path
) -> None:
    pidfile = passt.PasstPaths.for_vm(paths).pidfile
    pidfile.symlink_to(outside)
    passt._record(pidfile, os.getpid())
    assert outside.read_bytes() == SECRET
    assert not pidfile.is_symlink()
    pid, started = pidfile.read_text().split()
    assert int(pid) == os.getpid()
    assert float(started) == psutil.Process().create_time()


def test_passts_pidfile_as_a_fifo_finds_nothing_without_hanging(paths: VmPaths) -> None:
    os.mkfifo(passt.PasstPaths.for_vm(paths).pidfile)
    assert passt.find(passt.PasstPaths.for_vm(paths)) is None


def test_passts_log_behind_a_symlink_is_not_quoted_in_an_error(
    paths: VmPaths, outside: Path
) -> None:
    log = passt.PasstPaths.for_vm(paths).log
    log.symlink_to(outside)
    assert passt._tail(log) == ""
    log.unlink()
    log.write_text("passt: no such interface\n")
    assert passt._tail(log) == "passt: no such interface"


def test_a_migrations_marker_planted_as_a_symlink_does_not_truncate_its_target(
    paths: VmPaths, outside: Path
) -> None:
    dest = migration.destination(paths, "abcd")
    dest.make()
    (dest.run_dir / migration.COMMITTED).symlink_to(outside)
    assert not migration.is_committed(dest)
    migration.mark_committed(dest)
    assert outside.read_bytes() == SECRET
    assert migration.is_committed(dest)


class _SwappingSocket(socket.socket):
    """Binds, then does what the QEMU user can do in a folder it owns: swaps the new
    socket's name for a symlink to a host file (it cannot write in the runtime dir)."""

    run_dir: Path
    target: Path

    def bind(self, address: object) -> None:
        super().bind(address)  # type: ignore[arg-type]
        bound = Path(str(address))
        if bound.parent == self.run_dir:
            bound.unlink()
            bound.symlink_to(self.target)


def test_the_qmp_sockets_mode_is_not_set_through_a_symlink_swapped_in_after_the_bind(
    paths: VmPaths, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _SwappingSocket.run_dir, _SwappingSocket.target = paths.run_dir, outside
    monkeypatch.setattr(socket, "socket", _SwappingSocket)  # the module machine binds with
    sock = machine._listening_socket(paths.qmp_socket)
    try:
        assert stat.S_IMODE(outside.stat().st_mode) == 0o644
        st = os.lstat(paths.qmp_socket)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(paths.qmp_socket))
    finally:
        sock.close()
