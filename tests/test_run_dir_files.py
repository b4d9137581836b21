"""Files the server (root) writes or reads in a VM's run and data dirs besides the
snapshot files (tests/test_snapfiles.py): passt's pidfile and log, a migration's
marker, the QMP socket. Those dirs belong to the QEMU user, so a QEMU taken over by its
guest can plant a symlink or a FIFO there at any moment; none is followed or waited on."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import psutil
import pytest

from hypermachine.hypervisor import migration
from hypermachine.hypervisor.devices import passt
from hypermachine.hypervisor.qemu import machine
from hypermachine.hypervisor.vmfiles.layout import VmPaths

SECRET = b"root's secret\n"


@pytest.fixture
def host_file(tmp_path: Path) -> Path:
    path = tmp_path / "host" / "passwd"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    path.chmod(0o644)
    return path


@pytest.fixture
def paths(tmp_path: Path) -> VmPaths:
    found = VmPaths.for_vm(tmp_path / "vms", tmp_path / "run", "vm-1")
    found.make()
    return found


def test_passts_pidfile_planted_as_a_symlink_is_replaced_not_written_through(
    paths: VmPaths, host_file: Path
) -> None:
    pidfile = passt.PasstPaths.for_vm(paths).pidfile
    pidfile.symlink_to(host_file)
    passt._record(pidfile, os.getpid())
    assert host_file.read_bytes() == SECRET
    assert not pidfile.is_symlink()
    pid, started = pidfile.read_text().split()
    assert int(pid) == os.getpid()
    assert float(started) == psutil.Process().create_time()


def test_passts_pidfile_as_a_fifo_finds_nothing_without_hanging(paths: VmPaths) -> None:
    os.mkfifo(passt.PasstPaths.for_vm(paths).pidfile)
    assert passt.find(passt.PasstPaths.for_vm(paths)) is None


def test_passts_log_behind_a_symlink_is_not_quoted_in_an_error(
    paths: VmPaths, host_file: Path
) -> None:
    log = passt.PasstPaths.for_vm(paths).log
    log.symlink_to(host_file)
    assert passt._tail(log) == ""
    log.unlink()
    log.write_text("passt: no such interface\n")
    assert passt._tail(log) == "passt: no such interface"


def test_a_migrations_marker_planted_as_a_symlink_does_not_truncate_its_target(
    paths: VmPaths, host_file: Path
) -> None:
    dest = migration.destination(paths, "abcd")
    dest.make()
    (dest.run_dir / migration.COMMITTED).symlink_to(host_file)
    assert not migration.is_committed(dest)
    migration.mark_committed(dest)
    assert host_file.read_bytes() == SECRET
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
    paths: VmPaths, host_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _SwappingSocket.run_dir, _SwappingSocket.target = paths.run_dir, host_file
    monkeypatch.setattr(socket, "socket", _SwappingSocket)  # the module machine binds with
    sock = machine._listening_socket(paths.qmp_socket)
    try:
        assert stat.S_IMODE(host_file.stat().st_mode) == 0o644
        st = os.lstat(paths.qmp_socket)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(paths.qmp_socket))
    finally:
        sock.close()
