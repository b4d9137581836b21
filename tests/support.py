"""Helpers shared by tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

from hypermachine.api import Services
from hypermachine.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
TINY_DIR = REPO / "images" / "tiny"


def tiny_kernel_image(name: str, switches: str = "") -> str:
    """A catalogue entry booting the tiny image's kernel with extra command-line switches
    (the tiny guest's ``hm.*`` test switches, docs/images.md)."""
    return f"""
[[image]]
name = "{name}"
boot = "kernel"
dir = "tiny"
disk = "disk.qcow2"
kernel = "vmlinux"
initrd = "initrd.img"
append = "console=ttyS0 quiet panic=-1{" " + switches if switches else ""}"
"""


def require_tiny() -> None:
    if (TINY_DIR / "image.json").exists():
        return
    message = "the tiny image is not built: run tools/build-tiny-image (make test does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def qemu_pids_for(uuids: set[str]) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(u in cmdline for u in uuids):
            found.append(proc.info["pid"])
    return found


async def wait_until(
    condition: Callable[[], object], *, timeout: float = 30, what: str = "condition"
) -> object:
    """Poll ``condition`` in short steps until truthy; for facts with no event (a log line)."""
    last: object = None
    with trio.move_on_after(timeout):
        while True:
            last = condition()
            if last:
                return last
            await trio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value {last!r}")


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting its reaper counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def make_settings(data_dir: Path, compile_cache: Path, **overrides: object) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "data_dir": data_dir,
            "compile_cache_dir": compile_cache,
            "stop_timeout_s": 20.0,
            "qmp_connect_timeout_s": 20.0,
            # Each test picks the restore path it checks: a standby is made only where
            # it asks for one (tests/test_standby.py), never in a race with its steps.
            "snapshot_standby": False,
            **overrides,
        },
    )


def wait_for_file_text(path: Path, needle: bytes, *, timeout: float) -> None:
    """Block until ``needle`` appears in ``path`` (a log has no event: poll it)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and needle in path.read_bytes():
            return
        time.sleep(0.1)
    tail = path.read_bytes()[-1500:] if path.exists() else b"(no file)"
    raise AssertionError(f"{needle!r} not in {path} after {timeout} s; tail: {tail!r}")


async def remove_all_vms(svc: Services) -> set[str]:
    uuids = set()
    for vm in svc.manager.list()[0]:
        uuids.add(vm.uuid)
        await svc.manager.delete(vm.id, force=True)
    return uuids


async def wait_until_read(
    read: Callable[[], Awaitable[object]], expected: object, timeout: float = 90
) -> None:
    """Re-read what ``read`` returns (a guest's state that a server task sets) until it
    is ``expected``."""
    last = None
    with trio.move_on_after(timeout):
        while (last := await read()) != expected:
            await trio.sleep(0.2)
        return
    raise AssertionError(f"read {last!r} for {timeout} s, expected {expected!r}")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=3) as answer:
        return bytes(answer.read())


async def fetch_when_served(url: str, timeout: float) -> bytes:
    """GET ``url`` until the guest's server answers (slirp accepts before it listens)."""
    last: Exception | None = None
    with trio.move_on_after(timeout):
        while True:
            try:
                return await trio.to_thread.run_sync(_get, url)
            except OSError as err:
                last = err
                await trio.sleep(0.25)
    raise AssertionError(f"{url} never answered: {last!r}")


async def post(client: Any, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """POST ``body`` with a Quart test client: (status, JSON answer)."""
    response = await client.post(path, json=body if body is not None else {})
    return response.status_code, await response.get_json()


# What a hostile QEMU user writes over a RAM file of its VM's folder.
GARBLED_STREAM = b"not a migration stream " * 4096


async def boot_tiny(client: Any, name: str) -> dict[str, Any]:
    """Create and start a 512 MiB tiny guest; the VM once QEMU runs it."""
    body = {"name": name, "image": "tiny", "memory_mb": 512, "disk_gb": 1,
            "start": True, "wait": True}  # fmt: skip
    status, vm = await post(client, "/api/v1/vms", body)
    assert (status, vm["state"]) == (201, "running"), vm
    return dict(vm)


async def sh(client: Any, vm_id: str, script: str, agent_wait_s: int = 180) -> str:
    """Run ``script`` in the guest (waiting for its agent) and return its stdout."""
    status, got = await post(
        client,
        f"/api/v1/vms/{vm_id}/exec?wait_agent={agent_wait_s}",
        {"command": ["sh", "-c", script]},
    )
    assert status == 200 and got["exit_code"] == 0, got
    return str(got["stdout"])
