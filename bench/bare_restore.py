"""The floor of restore -> first exec on this host: bare QEMU, nothing of HyperMachine.

The tiny guest is booted by hand, its RAM saved with ``migrate``, and then, ``runs``
times, a new QEMU is started with ``-incoming fd:N`` (the stream starts loading as QEMU
starts: no request of ours in between), ``cont``-ed once loaded, and asked by its
qemu-ga for one ``true``, whose exit is polled every 2 ms. The agent's
``guest-sync-delimited`` is written before the load ends, so the guest reads it the
moment it runs. What no manager built on QEMU 7.2 can go below here, measured beside
HyperMachine's figures in the same run (docs/snapshots.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "images" / "tiny"
_POLL_S = 0.002
_BOOT_TIMEOUT_S = 120
_READY = b"HM-READY tiny"


class _Lines:
    """Newline-delimited JSON over a unix socket (QMP and qemu-ga speak it alike)."""

    def __init__(self, path: Path, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:  # QEMU makes its sockets a moment after it starts
            self.sock = socket.socket(socket.AF_UNIX)
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
        self._buffer = b""

    def send(self, message: dict[str, Any], *, fds: tuple[int, ...] = ()) -> None:
        data = json.dumps(message).encode() + b"\n"
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.sendall(data)

    def receive(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("QEMU closed the socket")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line.lstrip(b"\xff"))
        return reply

    def close(self) -> None:
        self.sock.close()


class _Qmp(_Lines):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.receive()  # the greeting
        self.run("qmp_capabilities")

    def run(
        self, command: str, arguments: dict[str, Any] | None = None, fds: tuple[int, ...] = ()
    ) -> Any:
        self.send({"execute": command, "arguments": arguments or {}}, fds=fds)
        while "event" in (reply := self.receive()):
            pass
        if "error" in reply:
            raise RuntimeError(f"{command}: {reply['error']}")
        return reply["return"]

    def status(self) -> str:
        return str(self.run("query-status")["status"])

    def translated_blocks(self) -> int:
        jit = str(self.run("human-monitor-command", {"command-line": "info jit"}))
        counts = (line.split()[2] for line in jit.splitlines() if line.startswith("TB count"))
        return int(next(counts))


class _Agent(_Lines):
    def sync(self, sync_id: int) -> None:
        self.send({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}})
        self.await_sync(sync_id)

    def await_sync(self, sync_id: int) -> None:
        while self.receive().get("return") != sync_id:
            pass

    def call(self, command: str, **arguments: Any) -> Any:
        self.send({"execute": command, "arguments": arguments})
        return self.receive()["return"]

    def run_true(self) -> None:
        pid = self.call("guest-exec", path="true", **{"capture-output": True})["pid"]
        while not self.call("guest-exec-status", pid=pid)["exited"]:
            time.sleep(_POLL_S)


def _argv(folder: Path, *incoming: str) -> list[str]:
    blockdev = [{"driver": "file", "node-name": "f0", "filename": str(folder / "disk.qcow2")},
                {"driver": "qcow2", "node-name": "d0", "file": "f0"}]  # fmt: skip
    return [
        "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-smp", "1", "-m", "512M",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-chardev", f"socket,id=s0,path={folder}/serial.sock,server=on,wait=off,"
                    f"logfile={folder}/console.log",
        "-serial", "chardev:s0",
        "-chardev", f"socket,id=qmp,path={folder}/qmp.sock,server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"socket,id=qga0,path={folder}/qga.sock,server=on,wait=off",
        "-device", "virtio-serial-pci,id=vser0",
        "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
        "-blockdev", json.dumps(blockdev[0]), "-blockdev", json.dumps(blockdev[1]),
        "-device", "virtio-blk-pci,drive=d0", "-nic", "none",
        "-kernel", str(TINY / "vmlinux"), "-initrd", str(TINY / "initrd.img"),
        "-append", "console=ttyS0 quiet panic=-1", "-S", *incoming,
    ]  # fmt: skip


@contextlib.contextmanager
def _qemu(folder: Path, *incoming: str, pass_fds: tuple[int, ...] = ()) -> Iterator[_Qmp]:
    process = subprocess.Popen(_argv(folder, *incoming), pass_fds=pass_fds)
    try:
        qmp = _Qmp(folder / "qmp.sock")
        try:
            yield qmp
        finally:
            qmp.close()
    finally:
        process.kill()
        process.wait()


def _boot_and_save(folder: Path) -> int:
    """Boot the tiny guest, let its agent run a few commands, save its RAM to
    ``folder/ram``; returns the stream's size in bytes."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(TINY / "disk.qcow2"),
         "-F", "qcow2", str(folder / "disk.qcow2"), "1G"],
        check=True,
    )  # fmt: skip
    with _qemu(folder) as qmp:
        qmp.run("cont")
        deadline = time.monotonic() + _BOOT_TIMEOUT_S
        log = folder / "console.log"
        while not (log.exists() and _READY in log.read_bytes()):
            if time.monotonic() > deadline:
                raise TimeoutError("the tiny guest did not boot")
            time.sleep(0.05)
        agent = _Agent(folder / "qga.sock")
        agent.sync(1)
        for _ in range(3):
            agent.run_true()
        # Saved with the agent's socket connected, as a manager keeps it: a qemu-ga that
        # finds its host end closed sleeps 100 ms before each new look.
        qmp.run("stop")
        qmp.run("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        with open(folder / "ram", "wb") as ram:
            qmp.run("getfd", {"fdname": "ram"}, fds=(ram.fileno(),))
            qmp.run("migrate", {"uri": "fd:ram"})
        while qmp.run("query-migrate").get("status") not in ("completed", "failed"):
            time.sleep(_POLL_S)
        agent.close()
    return (folder / "ram").stat().st_size


def _restore_once(folder: Path, n: int) -> dict[str, float]:
    """Milliseconds from QEMU's start: to QMP, to the RAM loaded, then the guest's own
    part (``cont`` -> the first ``true`` exited); and how many blocks TCG translated."""
    with open(folder / "ram", "rb") as ram:
        t0 = time.monotonic()
        with _qemu(folder, "-incoming", f"fd:{ram.fileno()}", pass_fds=(ram.fileno(),)) as qmp:
            t_qmp = time.monotonic()
            agent = _Agent(folder / "qga.sock")
            agent.send({"execute": "guest-sync-delimited", "arguments": {"id": 100 + n}})
            while qmp.status() == "inmigrate":
                time.sleep(_POLL_S)
            t_loaded = time.monotonic()
            qmp.run("cont")
            t_cont = time.monotonic()
            agent.await_sync(100 + n)
            agent.run_true()
            t_exit = time.monotonic()
            blocks = qmp.translated_blocks()  # all since cont: no guest code ran before
            t_warm0 = time.monotonic()
            agent.run_true()
            t_warm = time.monotonic()
            agent.close()
    return {
        "total": (t_exit - t0) * 1000,
        "start": (t_qmp - t0) * 1000,
        "load": (t_loaded - t_qmp) * 1000,
        "guest": (t_exit - t_cont) * 1000,
        "warm": (t_warm - t_warm0) * 1000,
        "blocks": blocks,
    }


def floor(runs: int) -> dict[str, float]:
    """The medians of ``runs`` bare restores, and the stream's size in MiB."""
    with tempfile.TemporaryDirectory(prefix="hm-bare-") as tmp:
        folder = Path(tmp)
        size = _boot_and_save(folder)
        samples = [_restore_once(folder, n) for n in range(runs)]
    medians = {key: statistics.median(s[key] for s in samples) for key in samples[0]}
    return {**medians, "stream_mb": size / 2**20}


if __name__ == "__main__":
    print(floor(int(os.environ.get("HM_BENCH_RUNS", "5"))))
