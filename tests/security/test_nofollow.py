"""The server never follows a symlink planted in a VM's folder (which the QEMU user owns),
and refuses a runtime dir that is not its own.

Each test plants a symlink to a file outside (in the test's tmp dir) where the server
reads or writes, and shows the outside file is neither read nor changed.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hypermachine.config import ConfigError
from hypermachine.errors import HypervisorError
from hypermachine.hypervisor.devices import cloudinit
from hypermachine.hypervisor.guest.console import rotate_at_start, rotate_if_over, tail_lines
from hypermachine.hypervisor.qemu.machine import adopt_pid, spawn_qemu
from hypermachine.hypervisor.vmfiles.layout import VmPaths, claim_server_dir
from hypermachine.models import CloudInitSpec, Vm, VmState
from hypermachine.server import open_services
from support import make_settings

SECRET = b"root:$y$j9T$not-for-the-guest:19000:0:99999:7:::\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file of the host's that a hostile QEMU would like the server to read or write."""
    path = tmp_path / "outside" / "shadow"
    path.parent.mkdir()
    path.write_bytes(SECRET)
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
