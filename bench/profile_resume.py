"""Where a restore's and a fork's time goes: one timeline per step (docs/snapshots.md).

Runs the server in-process on a scratch data dir with the tiny guest, takes a memory
snapshot of a booted guest, then restores it and forks it ``HM_PROFILE_RUNS`` times
(3 by default), each followed by a first exec answered by the guest, and prints the
milliseconds since the request at which each step ended: QEMU's argv built, its
process started, QMP connected, every QMP command, the stream loaded, ``cont``, the
guest agent's socket opened, synced and ``guest-info``'d, ``guest-exec`` and each
``guest-exec-status``. The steps are timed by wrapping the functions that do them;
nothing is skipped or faked.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from hypermachine.hypervisor import manager, snapshot_service  # noqa: E402
from hypermachine.hypervisor.devices import cloudinit, passt, resources  # noqa: E402
from hypermachine.hypervisor.guest import guest_agent  # noqa: E402
from hypermachine.hypervisor.platform import vmplatform  # noqa: E402
from hypermachine.hypervisor.qemu import machine  # noqa: E402
from hypermachine.hypervisor.storage import layers, snapshots  # noqa: E402
from hypermachine.models import (  # noqa: E402
    CreateVmRequest,
    ExecRequest,
    ForkRequest,
    SnapshotRequest,
    Vm,
    VmState,
)
from hypermachine.server import open_services  # noqa: E402
from support import make_settings, remove_all_vms  # noqa: E402

RUNS = int(os.environ.get("HM_PROFILE_RUNS", "3"))
_marks: list[tuple[float, str]] = []


def _mark(label: str) -> None:
    _marks.append((time.monotonic(), label))


def _timed_async(owner: Any, name: str, label: Callable[..., str | None]) -> None:
    original = getattr(owner, name)

    @wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        text = label(*args, **kwargs)
        if text is not None:
            _mark(text)
        return result

    setattr(owner, name, wrapper)


def _timed_sync(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    @wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        _mark(label)
        return result

    setattr(owner, name, wrapper)


def instrument() -> None:
    _timed_async(snapshot_service.SnapshotService, "_end_qemu", lambda *a, **k: "old QEMU ended")
    _timed_async(layers, "create_above", lambda *a, **k: "qemu-img: new top layer")
    _timed_async(passt.PasstProcesses, "serve", lambda *a, **k: "passt serving (beside QEMU)")
    _timed_sync(cloudinit, "write_seed", "cloud-init seed written")
    _timed_async(resources.HostResources, "acquire", lambda *a, **k: "host resources held")
    _timed_async(vmplatform, "launch_platform", lambda *a, **k: "firmware/TPM ready")
    _timed_sync(manager, "build_argv", "argv built")
    _timed_sync(manager, "spawn_qemu", "QEMU process started")
    _timed_async(machine.Machine, "connect", lambda *a, **k: "QMP connected")
    _timed_async(machine.Machine, "execute", lambda self, command, *a, **k: f"qmp {command}")
    _timed_async(
        machine.Machine, "execute_with_fd", lambda self, command, *a, **k: f"qmp {command} + fd"
    )
    _timed_async(snapshots, "load_memory", lambda *a, **k: "stream loaded")
    _timed_async(guest_agent._Channel, "sync", lambda *a, **k: "agent synced")
    _timed_async(
        guest_agent._Channel,
        "call",
        lambda self, ident, command, *a, **k: f"agent {command}",
    )
    original_open = trio.open_unix_socket

    async def open_unix_socket(path: Any) -> Any:
        stream = await original_open(path)
        if str(path).endswith("qga.sock"):
            _mark("agent socket opened")
        return stream

    trio.open_unix_socket = open_unix_socket  # type: ignore[assignment]


async def timeline(label: str, action: Callable[[], Awaitable[str]], svc: Any) -> float:
    _marks.clear()
    t0 = time.monotonic()
    vm_id = await action()
    _mark("VM running (request answered)")
    result = await svc.manager.guest.exec(vm_id, ExecRequest(command=["true"]), wait_agent_s=120)
    assert result.exit_code == 0, result
    total = (time.monotonic() - t0) * 1000
    _mark("first exec answered")
    print(f"\n{label}: {total:.0f} ms")
    previous = t0
    for at, step in _marks:
        print(f"  {(at - t0) * 1000:7.1f} ms  (+{(at - previous) * 1000:6.1f})  {step}")
        previous = at
    return total


async def main() -> None:
    instrument()
    with tempfile.TemporaryDirectory(prefix="hm-profile-") as tmp:
        data, cache = Path(tmp) / "data", Path(tmp) / "cache"
        data.mkdir()
        cache.mkdir()
        settings = make_settings(data, cache)
        async with open_services(settings) as svc:
            mgr = svc.manager
            try:
                created = await mgr.create(
                    CreateVmRequest(name="prof", image="tiny", memory_mb=512, disk_gb=1, start=True)
                )
                vm_id = created.vm.id
                await mgr.wait_for(vm_id, {VmState.RUNNING}, 300)
                await mgr.guest.exec(vm_id, ExecRequest(command=["true"]), wait_agent_s=300)
                await mgr.snapshot(vm_id, SnapshotRequest(name="warm", memory=True))

                async def restore() -> str:
                    await mgr.restore(vm_id, "warm", wait=True)
                    return vm_id

                restores = [await timeline(f"restore {n}", restore, svc) for n in range(RUNS)]
                forks = []
                for n in range(RUNS):
                    children: list[str] = []

                    async def fork(n: int = n, children: list[str] = children) -> str:
                        made = await mgr.fork(
                            vm_id, ForkRequest(name=f"f{n}", snapshot="warm", wait=True)
                        )
                        child: Vm = made[0]
                        children.append(child.id)
                        return child.id

                    forks.append(await timeline(f"fork {n}", fork, svc))
                    await mgr.delete(children[0], force=True)
                restore_ms, fork_ms = statistics.median(restores), statistics.median(forks)
                load = " ".join(f"{n:.1f}" for n in os.getloadavg())
                print(f"\nmedian restore {restore_ms:.0f} ms, fork {fork_ms:.0f} ms; load {load}")
            finally:
                with trio.CancelScope(shield=True):
                    await remove_all_vms(svc)


if __name__ == "__main__":
    trio.run(main)
