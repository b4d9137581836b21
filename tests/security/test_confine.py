"""QEMU and swtpm run as an unprivileged system user when the server runs as root,
even with a data dir that user could not reach (a 0700 ``mktemp -d``): never as root."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypermachine.api import create_app
from hypermachine.config import ConfigError
from hypermachine.hypervisor.platform import tpm
from hypermachine.hypervisor.vmfiles.confine import DEFAULT_QEMU_USER, resolve_qemu_identity
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from hypermachine.models import CreateVmRequest, SecuritySpec, SnapshotRequest, VmState
from hypermachine.server import open_services
from support import make_settings, qemu_pids_for, remove_all_vms, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs root")


@pytest.fixture
def private_dir() -> Iterator[Path]:
    """A fresh ``mktemp -d``: mode 0700, root's; the QEMU user cannot pass through it."""
    path = Path(tempfile.mkdtemp(prefix="hm-confine-"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    yield path
    shutil.rmtree(path)


def _status(pid: int, field: str) -> list[int]:
    """A numeric line of ``/proc/<pid>/status`` (``Uid``: real, effective, saved, fs)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return [int(g) for g in line.split()[1:]]
    raise AssertionError(f"no {field} line")


def _as_user(user: str, *argv: str) -> bool:
    """Whether ``argv`` succeeds run as ``user`` (its own group, no others)."""
    entry = pwd.getpwnam(user)
    run = subprocess.run(argv, user=entry.pw_uid, group=entry.pw_gid, extra_groups=[],
                         capture_output=True, check=False)  # fmt: skip
    return run.returncode == 0


def _reaches(user: str, folder: Path) -> bool:
    return _as_user(user, "test", "-x", str(folder))


@pytest.mark.qemu
async def test_qemu_and_swtpm_run_as_the_unprivileged_user(
    private_dir: Path, compile_cache: Path, tiny: Path
) -> None:
    assert not _reaches(DEFAULT_QEMU_USER, private_dir)
    settings = make_settings(private_dir / "data", compile_cache, qemu_user="auto")
    uuids: set[str] = set()
    async with open_services(settings) as svc:
        try:
            user = pwd.getpwnam(DEFAULT_QEMU_USER)
            identity = svc.manager.qemu_identity
            assert identity is not None and identity.uid == user.pw_uid
            health = await (await create_app(svc).test_client().get("/health")).get_json()
            assert health["qemu_user"] == DEFAULT_QEMU_USER
            # A chmod resets the ACL's mask (pytest does it to its tmp root at every
            # session start): creating and starting a VM restores the entry.
            private_dir.chmod(0o700)
            assert not _reaches(DEFAULT_QEMU_USER, private_dir)
            request = CreateVmRequest(
                name="jail",
                image="tiny",
                memory_mb=512,
                disk_gb=1,
                security=SecuritySpec(vtpm=True),
            )
            vm = (await svc.manager.create(request)).vm
            await svc.manager.wait_for(vm.id, {VmState.STOPPED}, 60)
            await svc.manager.start(vm.id)
            vm = await svc.manager.wait_for(vm.id, {VmState.RUNNING}, 120)
            assert vm.pid is not None
            paths = VmPaths.for_vm(settings.vms_dir, settings.runtime_dir, vm.id)
            swtpm = tpm.find(tpm.TpmPaths.for_vm(paths))
            assert swtpm is not None
            for pid in (vm.pid, swtpm):  # QEMU, and the swtpm it talks to
                assert _status(pid, "Uid") == [user.pw_uid] * 4, pid
                assert _status(pid, "Gid") == [user.pw_gid] * 4, pid
                identity = svc.manager.qemu_identity
                assert identity is not None
                assert set(_status(pid, "Groups")) <= {user.pw_gid, *identity.groups}
            # made by swtpm_setup as that user, signed by this data dir's own local CA
            state = paths.vm_dir / "tpm" / "tpm2-00.permall"
            assert state.stat().st_uid == user.pw_uid
            assert (
                settings.data_dir / "swtpm" / "localca" / "signkey.pem"
            ).stat().st_uid == user.pw_uid
            # only search permission was added above the data dir, for that user alone
            assert _reaches(DEFAULT_QEMU_USER, private_dir)
            assert stat.S_IMODE(private_dir.stat().st_mode) == 0o710  # the ACL mask: --x
            assert not _reaches("nobody", private_dir)
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
            # A running QEMU opening a new file (a live snapshot's layer) after another
            # such chmod: the entry is restored first, and the layer is the QEMU user's.
            private_dir.chmod(0o700)
            snap = await svc.manager.snapshot(vm.id, SnapshotRequest(name="s1", memory=True))
            assert snap.memory and svc.manager.get(vm.id).state is VmState.RUNNING
            top = (paths.vm_dir / "disk.qcow2").resolve()
            assert top.stat().st_uid == user.pw_uid, top
        finally:
            uuids = await remove_all_vms(svc)
    assert qemu_pids_for(uuids) == []


def test_unreachable_folders_are_opened_to_the_qemu_user_alone(private_dir: Path) -> None:
    inner = private_dir / "a" / "b"
    inner.mkdir(mode=0o700, parents=True)
    assert not _reaches(DEFAULT_QEMU_USER, inner)
    for setting in ("auto", DEFAULT_QEMU_USER):  # never None (root) as a fallback
        identity = resolve_qemu_identity(setting, [inner])
        assert identity is not None and identity.name == DEFAULT_QEMU_USER
    assert _reaches(DEFAULT_QEMU_USER, inner)
    assert not _reaches("nobody", inner)
    assert not _as_user(DEFAULT_QEMU_USER, "ls", str(private_dir))  # search only, no listing
    # the explicit opt-out keeps QEMU as root; a missing named user is an error
    assert resolve_qemu_identity("", [inner]) is None
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_qemu_identity("hm-no-such-user", [inner])


@pytest.mark.qemu
@pytest.mark.parametrize("planted", ["tpm/tpm2-00.permall", "swtpm.log"])
async def test_swtpm_does_not_follow_a_symlink_in_the_vms_folder(
    private_dir: Path, compile_cache: Path, tiny: Path, planted: str
) -> None:
    """The TPM state and swtpm's log, swapped for links to a root file: swtpm (the QEMU
    user) cannot open it, so it is neither read nor written, and the VM says so."""
    outside = private_dir / "shadow"
    outside.write_bytes(b"root's secret\n")
    outside.chmod(0o600)
    before = outside.stat()
    settings = make_settings(private_dir / "data", compile_cache, qemu_user="auto")
    async with open_services(settings) as svc:
        try:
            request = CreateVmRequest(
                name="tpm-link",
                image="tiny",
                memory_mb=512,
                disk_gb=1,
                security=SecuritySpec(vtpm=True),
            )
            vm = (await svc.manager.create(request)).vm
            await svc.manager.wait_for(vm.id, {VmState.STOPPED}, 60)
            paths = VmPaths.for_vm(settings.vms_dir, settings.runtime_dir, vm.id)
            link = paths.vm_dir / planted
            link.unlink()
            link.symlink_to(outside)
            await svc.manager.start(vm.id)
            failed = await svc.manager.wait_for(vm.id, {VmState.ERROR}, 60)
            assert failed.state_reason and "TPM" in failed.state_reason, failed.state_reason
            assert outside.read_bytes() == b"root's secret\n"
            after = outside.stat()
            assert (after.st_mtime_ns, after.st_uid, after.st_mode) == (
                before.st_mtime_ns, before.st_uid, before.st_mode
            )  # fmt: skip
        finally:
            uuids = await remove_all_vms(svc)
    assert qemu_pids_for(uuids) == []
