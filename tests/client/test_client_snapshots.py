"""Snapshots, restore, fork and hibernation through the SDK (sync and async) and the CLI.

One guest is booted for the whole module and carried through the steps; fork children
and VMs made from a snapshot resume from saved RAM (they do not boot) and are deleted
by the test that made them. Each test leaves the guest running with its agent up.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pydantic
import pytest

from clientlive import CLI, Live, env, hm, ok
from hypermachine.client import (
    AsyncClient,
    AsyncVmHandle,
    HMError,
    NameTaken,
    NotFound,
    Snapshot,
    SnapshotNotFound,
    ValidationFailed,
    VmHandle,
    VmState,
)
from hypermachine.models import SnapshotRef

pytestmark = pytest.mark.qemu

AGENT_WAIT = 180  # after a restore or a resume the guest agent re-syncs first
NAME = "snap-guest"


def sh(vm: VmHandle, script: str) -> str:
    result = vm.exec(["sh", "-c", script], wait_agent=AGENT_WAIT)
    assert result.exit_code == 0, result
    return result.stdout or ""


async def ash(vm: AsyncVmHandle, script: str) -> str:
    result = await vm.exec(["sh", "-c", script], wait_agent=AGENT_WAIT)
    assert result.exit_code == 0, result
    return result.stdout or ""


@pytest.fixture(scope="module")
def vm(live: Live) -> Iterator[VmHandle]:
    with live.client() as client:
        guest = client.vms.create(
            name=NAME, image="tiny", memory_mb=512, disk_gb=1, start=True, wait=True
        )
        sh(guest, "true")
        yield guest
        guest.delete(force=True)


def test_sdk_snapshot_restore_and_errors(vm: VmHandle) -> None:
    sh(vm, "echo first > /tmp/marker")
    snap = vm.snapshots.create("s1", memory=True)
    assert isinstance(snap, Snapshot) and snap.complete
    assert (snap.name, snap.vm_id, snap.memory) == ("s1", vm.id, True)
    assert snap.vm_state is VmState.RUNNING
    assert snap.size_bytes > 1 << 20  # the RAM stream
    assert [s.name for s in vm.snapshots.list()] == ["s1"]
    assert vm.snapshots.get("s1").model_dump(exclude={"complete"}) == snap.model_dump(
        exclude={"complete"}
    )

    sh(vm, "echo second > /tmp/marker")
    restored = vm.snapshots.restore("s1")
    assert restored.state is VmState.RUNNING and vm.state is VmState.RUNNING
    assert sh(vm, "cat /tmp/marker") == "first\n"

    with pytest.raises(SnapshotNotFound) as missing:
        vm.snapshots.get("nope")
    assert (missing.value.code, missing.value.status) == ("SNAPSHOT_NOT_FOUND", 404)
    assert isinstance(missing.value, NotFound)
    with pytest.raises(SnapshotNotFound):
        vm.snapshots.restore("nope")
    with pytest.raises(SnapshotNotFound):
        vm.snapshots.delete("nope")
    with pytest.raises(NameTaken):
        vm.snapshots.create("s1")
    with pytest.raises(pydantic.ValidationError):  # checked before anything is sent
        vm.snapshots.create("bad name!")
    with pytest.raises(ValidationFailed) as bad:  # a path segment: the server says no
        vm.snapshots.get("bad name!")
    assert bad.value.status == 400


def test_a_snapshot_name_cannot_reach_outside_its_place(live: Live, vm: VmHandle) -> None:
    """Names travel in the path: one that climbs out of its place (``snapshots/..`` is the
    VM itself, an HTTP client resolves it) is refused (4xx) by every call, and the VM
    and its snapshot are still there afterwards."""
    names = (".", "..", "../..", "../s1", "%2e%2e", ".hidden", "s1/../../..", "/etc/passwd")
    for name in names:
        for call in (vm.snapshots.get, vm.snapshots.delete, vm.snapshots.restore):
            with pytest.raises(HMError) as refused:
                call(name)
            assert 400 <= refused.value.status < 500, (name, call, refused.value)
    with pytest.raises(ValueError, match="empty"):
        vm.snapshots.delete("")
    assert [s.name for s in vm.snapshots.list()] == ["s1"]
    assert vm.refresh().state is VmState.RUNNING
    with live.client() as client:
        for ref in (".", ".."):
            with pytest.raises(HMError) as refused:
                client.vms.get(ref)
            assert 400 <= refused.value.status < 500, (ref, refused.value)


def test_sdk_fork_hibernate_and_a_vm_from_a_snapshot(live: Live, vm: VmHandle) -> None:
    children = vm.fork("kid", snapshot="s1", count=2, wait=True)
    try:
        assert [c.name for c in children] == ["kid-1", "kid-2"]
        assert all(isinstance(c, VmHandle) and c.state is VmState.RUNNING for c in children)
        assert [c.info.from_snapshot for c in children] == [
            SnapshotRef(vm_id=vm.id, snapshot="s1")
        ] * 2
        assert len({c.id for c in children} | {vm.id}) == 3
        for child in children:  # each carries on from the parent's RAM
            assert sh(child, "cat /tmp/marker") == "first\n"
    finally:
        for child in children:
            child.delete(force=True)

    sh(vm, "echo before-sleep > /tmp/marker")
    hibernated = vm.hibernate()
    assert hibernated.state is VmState.HIBERNATED and vm.state is VmState.HIBERNATED
    assert hibernated.pid is None
    assert vm.start(wait=True).state is VmState.RUNNING
    assert sh(vm, "cat /tmp/marker") == "before-sleep\n"  # resumed, not booted

    with live.client() as client:
        kept = client.vms.create(name="kept", from_snapshot=(vm.id, "s1"), labels={"k": "v"})
        try:
            assert kept.state is VmState.HIBERNATED and kept.info.labels == {"k": "v"}
            assert (kept.info.image, kept.info.memory_mb) == ("tiny", 512)  # the parent's spec
            assert kept.info.from_snapshot is not None
            assert kept.info.from_snapshot.snapshot == "s1"
        finally:
            kept.delete(force=True)
        with pytest.raises(SnapshotNotFound):
            client.vms.create(name="none", from_snapshot=(vm.id, "nope"))
        with pytest.raises(pydantic.ValidationError):  # the parent's spec: no cpus here
            client.vms.create(name="none", from_snapshot=vm.snapshots.get("s1"), cpus=2)
        assert [v.name for v in client.vms.list() if v.name in ("kept", "none")] == []


async def async_scenario(live: Live, vm_id: str, full: bool) -> None:
    async with AsyncClient(live.url, live.key) as client:
        vm = await client.vms.get(vm_id)
        with pytest.raises(SnapshotNotFound):
            await vm.snapshots.get("nope")
        made = await client.vms.create(name="async-kept", from_snapshot=(vm_id, "s1"))
        assert made.state is VmState.HIBERNATED
        await made.delete(force=True)
        if not full:
            assert "s1" in [s.name for s in await vm.snapshots.list()]
            return
        await ash(vm, "echo async > /tmp/marker")
        snap = await vm.snapshots.create("a1", memory=True)
        assert (snap.name, snap.memory) == ("a1", True)
        assert (await vm.snapshots.get("a1")).size_bytes == snap.size_bytes
        await ash(vm, "echo later > /tmp/marker")
        assert (await vm.snapshots.restore("a1")).state is VmState.RUNNING
        assert await ash(vm, "cat /tmp/marker") == "async\n"
        [child] = await vm.fork("async-kid", snapshot="a1", wait=True)
        assert isinstance(child, AsyncVmHandle) and child.state is VmState.RUNNING
        assert await ash(child, "cat /tmp/marker") == "async\n"
        await child.delete(force=True)
        assert (await vm.hibernate()).state is VmState.HIBERNATED
        assert (await vm.start(wait=True)).state is VmState.RUNNING
        await vm.snapshots.delete("a1")
        assert [s.name for s in await vm.snapshots.list()] == ["s1"]
        await ash(vm, "true")


async def test_async_snapshots_under_trio(live: Live, vm: VmHandle) -> None:
    await async_scenario(live, vm.id, full=True)


def test_async_snapshots_under_asyncio(live: Live, vm: VmHandle) -> None:
    anyio.run(async_scenario, live, vm.id, False, backend="asyncio")


def test_cli_snapshot_verbs(live: Live, vm: VmHandle) -> None:
    ok(live, "vm", "exec", NAME, "--", "sh", "-c", "echo cli > /tmp/marker")
    made = json.loads(ok(live, "vm", "snapshot", "create", NAME, "c1", "--memory", "-o", "json"))
    assert (made["name"], made["memory"], made["vm_state"]) == ("c1", True, "running")
    header, *rows = ok(live, "vm", "snapshot", "list", NAME).splitlines()
    assert header.split() == ["NAME", "VM", "MEMORY", "SIZE", "VM", "STATE", "AGE"]
    assert [r.split()[:3] for r in rows] == [["s1", vm.id, "yes"], ["c1", vm.id, "yes"]]
    assert ok(live, "vm", "snapshot", "list", NAME, "-q").split() == ["s1", "c1"]
    listed = json.loads(ok(live, "vm", "snapshot", "list", vm.id, "--json"))
    assert [s["name"] for s in listed] == ["s1", "c1"]
    got = json.loads(ok(live, "vm", "snapshot", "get", NAME, "c1", "-o", "json"))
    assert got["size_bytes"] == made["size_bytes"]

    ok(live, "vm", "exec", NAME, "--", "sh", "-c", "echo changed > /tmp/marker")
    restored = ok(live, "vm", "snapshot", "restore", NAME, "c1").split()
    assert NAME in restored and "running" in restored
    assert ok(live, "vm", "exec", "--wait-agent", "180", NAME, "--", "cat", "/tmp/marker") == (
        "cli\n"
    )

    assert ok(live, "vm", "snapshot", "delete", NAME, "c1") == f"deleted snapshot c1 of {NAME}\n"
    gone = hm(live, "vm", "snapshot", "get", NAME, "c1")
    assert gone.returncode == 1 and "SNAPSHOT_NOT_FOUND" in gone.stderr


def test_cli_fork_hibernate_and_create_from_snapshot(live: Live, vm: VmHandle) -> None:
    [instant] = json.loads(ok(live, "vm", "fork", NAME, "--wait", "-o", "json"))
    assert instant["name"].startswith(f"{NAME}-fork-") and instant["state"] == "running"
    assert ok(live, "vm", "delete", "--force", instant["id"]).startswith("deleted")
    ids = ok(live, "vm", "fork", NAME, "--snapshot", "s1", "--name", "ck", "--wait", "-q")
    [child] = ids.split()
    assert ok(live, "vm", "exec", "--wait-agent", "180", child, "--", "cat", "/tmp/marker") == (
        "first\n"
    )
    ok(live, "vm", "delete", "--force", child)

    made = json.loads(ok(live, "vm", "create", "tmpl", "--from-snapshot", f"{NAME}/s1",
                         "--start", "--wait", "-o", "json"))  # fmt: skip
    assert (made["state"], made["from_snapshot"]) == (
        "running", {"vm_id": vm.id, "snapshot": "s1"}
    )  # fmt: skip
    assert ok(live, "vm", "exec", "--wait-agent", "180", "tmpl", "--", "cat", "/tmp/marker") == (
        "first\n"
    )
    ok(live, "vm", "delete", "--force", "tmpl")

    assert "hibernated" in ok(live, "vm", "hibernate", NAME).split()
    assert "running" in ok(live, "vm", "start", NAME, "--wait").split()
    ok(live, "vm", "exec", "--wait-agent", "180", NAME, "--", "true")
    assert vm.refresh().state is VmState.RUNNING


def test_cli_errors_exit_1_with_the_code(live: Live, vm: VmHandle) -> None:
    for args, code in (
        (("vm", "snapshot", "restore", NAME, "nope"), "SNAPSHOT_NOT_FOUND"),
        (("vm", "snapshot", "get", NAME, "bad name!"), "VALIDATION_ERROR"),
        (("vm", "fork", NAME, "--snapshot", "nope"), "SNAPSHOT_NOT_FOUND"),
        (("vm", "create", "x", "--from-snapshot", f"{NAME}/nope"), "SNAPSHOT_NOT_FOUND"),
        (("vm", "create", "x", "--from-snapshot", NAME), "VALIDATION_ERROR"),
        (("vm", "create", "x", "--from-snapshot", f"{NAME}/s1", "--cpus", "2"),
         "VALIDATION_ERROR"),
        (("vm", "snapshot", "list", "no-such-vm"), "VM_NOT_FOUND"),
    ):  # fmt: skip
        done = hm(live, *args)
        assert done.returncode == 1 and f"error: {code}" in done.stderr, (args, done.stderr)
    assert "--cpus" in hm(live, "vm", "create", "x", "--from-snapshot", f"{NAME}/s1",
                          "--cpus", "2").stderr  # fmt: skip
    invalid = hm(live, "vm", "snapshot", "create", NAME, "bad name!")
    assert invalid.returncode == 2 and "invalid input" in invalid.stderr
    both = hm(live, "vm", "create", "x", "--image", "tiny", "--from-snapshot", f"{NAME}/s1")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    assert "x" not in ok(live, "vm", "list", "-q", "--name", "x").split()


def complete(live: Live, line: str, answers: Path) -> set[str]:
    """What shell completion offers after ``line`` (argcomplete's protocol), options left out."""
    os_env = {
        **env(live), "_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n", "COMP_LINE": line,
        "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(answers),
    }  # fmt: skip
    subprocess.run(CLI, env=os_env, capture_output=True, timeout=60)
    return {word for word in answers.read_text().split() if not word.startswith("-")}


def test_completion_offers_the_verbs_and_the_snapshots(
    live: Live, vm: VmHandle, tmp_path: Path
) -> None:
    answers = tmp_path / "answers"
    assert {"snapshot", "start", "stop", "script"} <= complete(live, "hypermachine vm s", answers)
    assert {"fork"} <= complete(live, "hypermachine vm f", answers)
    assert complete(live, "hypermachine vm snapshot ", answers) == {
        "create", "list", "get", "delete", "restore",
    }  # fmt: skip
    assert complete(live, f"hypermachine vm snapshot restore {NAME} ", answers) == {"s1"}
    assert complete(live, f"hypermachine vm create x --from-snapshot {NAME}/", answers) == {
        f"{NAME}/s1"
    }
