"""QEMU runs as an unprivileged system user when the server runs as root."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hypermachine.config import ConfigError
from hypermachine.hypervisor.confine import DEFAULT_QEMU_USER, resolve_qemu_identity
from hypermachine.hypervisor.layout import VmPaths
from hypermachine.models import CreateVmRequest, VmState
from hypermachine.server import open_services
from support import make_settings, qemu_pids_for, remove_all_vms, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs root")


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A data dir the QEMU user can reach (pytest's own tmp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="hm-confine-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


def _groups(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Groups:"):
            return {int(g) for g in line.split()[1:]}
    raise AssertionError("no Groups line")


@pytest.mark.qemu
async def test_qemu_runs_as_the_unprivileged_user(
    reachable_dir: Path, compile_cache: Path, tiny: Path
) -> None:
    settings = make_settings(reachable_dir / "data", compile_cache, qemu_user="auto")
    uuids: set[str] = set()
    async with open_services(settings) as svc:
        try:
            user = pwd.getpwnam(DEFAULT_QEMU_USER)
            assert svc.manager.qemu_identity is not None
            assert svc.manager.qemu_identity.uid == user.pw_uid
            request = CreateVmRequest(name="jail", image="tiny", memory_mb=512, disk_gb=1)
            vm = (await svc.manager.create(request)).vm
            await svc.manager.wait_for(vm.id, {VmState.STOPPED}, 60)
            await svc.manager.start(vm.id)
            vm = await svc.manager.wait_for(vm.id, {VmState.RUNNING}, 120)
            assert vm.pid is not None
            process = psutil.Process(vm.pid)
            assert set(process.uids()) == {user.pw_uid}
            assert set(process.gids()) == {user.pw_gid}
            assert _groups(vm.pid) <= {user.pw_gid, *svc.manager.qemu_identity.groups}
            paths = VmPaths.for_vm(settings.vms_dir, settings.runtime_dir, vm.id)
            for folder in (paths.vm_dir, paths.run_dir):
                st = folder.stat()
                assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, 0o700), folder
            qmp = paths.qmp_socket.stat()
            assert (qmp.st_uid, stat.S_IMODE(qmp.st_mode)) == (0, 0o600)
            # The guest boots: QEMU read the shared base image and kernel and writes its log.
            await wait_until(
                lambda: (
                    paths.console_log.exists() and b"HM-READY" in paths.console_log.read_bytes()
                ),
                timeout=120,
                what="HM-READY on the console",
            )
            assert paths.console_log.stat().st_uid == user.pw_uid
            # The server still drives it over QMP.
            status = await svc.manager.qmp(vm.id, "query-status", None)
            assert isinstance(status, dict) and status["status"] == "running"
        finally:
            uuids = await remove_all_vms(svc)
    assert qemu_pids_for(uuids) == []


def test_unreachable_folders(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    tmp_path.chmod(0o700)
    # auto falls back to root (with a warning); a named user is an error.
    assert resolve_qemu_identity("auto", [private / "vms"]) is None
    with pytest.raises(ConfigError, match="cannot reach"):
        resolve_qemu_identity(DEFAULT_QEMU_USER, [private / "vms"])
    assert resolve_qemu_identity("", [private]) is None
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_qemu_identity("hm-no-such-user", [private])
