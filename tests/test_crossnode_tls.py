"""The network boundary of a live migration between nodes, attacked with real QEMU 7.2:
a destination waiting for a migration (``crossnode.open_incoming``) serves its disk over
NBD only to a client holding the migration's TLS key, and a stranger who reaches its
stream port first gets nothing in: the destination gives up (it exits) and never runs
what the stranger sent."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from hypermachine.hypervisor import crossnode
from hypermachine.hypervisor.qemu import qmp_commands
from hypermachine.hypervisor.qemu.machine import Machine
from hypermachine.hypervisor.qemu.qmp import QmpBridge
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from support import wait_until

KEY = "5a" * 32


def _qemu(paths: VmPaths, *incoming: str) -> subprocess.Popen[bytes]:
    disk = paths.vm_dir / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    file_node = {"driver": "file", "node-name": "disk0-file", "filename": str(disk)}
    return subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "64",
         "-display", "none", "-nodefaults", "-S", *incoming,
         "-qmp", f"unix:{paths.qmp_socket},server=on,wait=off",
         "-blockdev", json.dumps(file_node),
         "-blockdev", json.dumps({"driver": "qcow2", "node-name": "disk0", "file": "disk0-file"}),
         "-device", "virtio-blk-pci,drive=disk0,id=vd0"],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture
async def waiting(tmp_path: Path) -> AsyncIterator[tuple[Machine, socket.socket, int]]:
    """A destination QEMU waiting for a migration, its disk exported (TLS, ``KEY``)."""
    paths = VmPaths(vm_dir=tmp_path / "vm", run_dir=tmp_path / "run")
    paths.make()
    bridge = QmpBridge()
    dest = await _machine(bridge, paths, "-incoming", "defer")
    try:
        psk_dir = crossnode.write_psk(paths.run_dir / "tls", KEY, None)
        stream, nbd_port = await crossnode.open_incoming(dest, "127.0.0.1", psk_dir, ["disk0"])
        assert nbd_port is not None
        yield dest, stream, nbd_port
    finally:
        await _end(dest)
        bridge.close()


async def _machine(bridge: QmpBridge, paths: VmPaths, *incoming: str) -> Machine:
    child = _qemu(paths, *incoming)
    machine = Machine(vm_id="vm-000000000001", pid=child.pid, paths=paths, child=child)
    await wait_until(paths.qmp_socket.exists, what="QEMU's QMP socket")
    await machine.connect(bridge, 20)
    return machine


async def _end(machine: Machine) -> None:
    if machine.child is not None:
        machine.child.kill()
        machine.child.wait()
    if machine.session is not None:
        await machine.session.close()


def _nbd_info(port: int, tmp_path: Path, key: str | None) -> subprocess.CompletedProcess[str]:
    opts = f"driver=nbd,host=127.0.0.1,port={port},export=disk0"
    extra: list[str] = []
    if key is not None:
        keys = tmp_path / f"client-{key[:4]}"
        keys.mkdir()
        (keys / "keys.psk").write_text(f"hm:{key}\n")
        extra = ["--object", f"tls-creds-psk,id=tls0,endpoint=client,dir={keys},username=hm"]
        opts += ",tls-creds=tls0"
    return subprocess.run(
        ["qemu-img", "info", *extra, "--image-opts", opts],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


async def test_the_disk_export_answers_only_the_migration_key(
    waiting: tuple[Machine, socket.socket, int], tmp_path: Path
) -> None:
    _, stream, nbd_port = waiting
    stream.close()
    plain = await trio.to_thread.run_sync(_nbd_info, nbd_port, tmp_path, None)
    assert plain.returncode != 0 and "TLS" in plain.stderr, plain.stderr
    wrong = await trio.to_thread.run_sync(_nbd_info, nbd_port, tmp_path, "a5" * 32)
    assert wrong.returncode != 0, wrong.stdout
    right = await trio.to_thread.run_sync(_nbd_info, nbd_port, tmp_path, KEY)
    assert right.returncode == 0 and "virtual size: 16 MiB" in right.stdout, right.stderr


async def test_a_stranger_streaming_a_real_state_without_the_key_gets_nothing_in(
    waiting: tuple[Machine, socket.socket, int], tmp_path: Path
) -> None:
    """Another QEMU (no TLS) sends a complete, valid migration stream to the port first:
    the destination loads none of it, and the port takes nobody else."""
    dest, stream, _ = waiting
    port = stream.getsockname()[1]
    paths = VmPaths(vm_dir=tmp_path / "intruder", run_dir=tmp_path / "intruder-run")
    paths.make()
    bridge = QmpBridge()
    intruder = await _machine(bridge, paths)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crossnode.receive_state, dest, stream, frozenset({"127.0.0.1"}))
            connection = trio.socket.socket()
            await connection.connect(("127.0.0.1", port))
            with connection:
                await qmp_commands.getfd(intruder, connection.fileno(), "in")
            await qmp_commands.migrate(intruder, "in")
            sent = await _sent(intruder)
        assert sent != "completed"  # the destination's TLS refused it
        assert (await qmp_commands.query_status(dest)).status == "inmigrate"  # loaded nothing
        with pytest.raises(OSError):  # and the port is closed to anyone else
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        await _end(intruder)
        bridge.close()


async def _sent(machine: Machine) -> str | None:
    """The sending QEMU's migration status once it has ended."""
    with trio.fail_after(60):
        while True:
            status = (await qmp_commands.query_migrate(machine)).status
            if status in ("completed", "failed", "cancelled"):
                return status
            await trio.sleep(0.05)


async def test_a_connection_from_another_host_is_closed_and_the_source_still_gets_in(
    waiting: tuple[Machine, socket.socket, int],
) -> None:
    """Only the source node's address may take the stream port: another's connection
    is closed unread, and the port still takes the source's (here 127.0.0.2)."""
    dest, stream, _ = waiting
    port = stream.getsockname()[1]
    source = trio.socket.socket()
    with trio.fail_after(30), source:  # receive_state returns once QEMU has the source's
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crossnode.receive_state, dest, stream, frozenset({"127.0.0.2"}))
            stranger = trio.socket.socket()
            await stranger.connect(("127.0.0.1", port))
            with stranger:
                assert await stranger.recv(1) == b""  # closed by the destination's server
            await source.bind(("127.0.0.2", 0))
            await source.connect(("127.0.0.1", port))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


async def test_without_a_stranger_the_destination_waits(
    waiting: tuple[Machine, socket.socket, int],
) -> None:
    """The control: the destination above exits because of the stranger, not by itself."""
    dest, stream, _ = waiting
    stream.close()
    status = await qmp_commands.query_status(dest)
    assert status.status == "inmigrate"
