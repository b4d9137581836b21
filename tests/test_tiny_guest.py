"""Boot the built tiny guest for real under QEMU (TCG) and check what the suite relies on.

* ``HM-READY tiny`` reaches the serial log;
* the serial console runs a shell that answers typed commands;
* qemu-ga answers ``guest-sync-delimited`` / ``guest-ping`` over virtio-serial;
* ``system_powerdown`` (ACPI power button) makes the guest power off: SHUTDOWN, guest-shutdown;
* ``hm.poweroff`` powers off by itself; ``hm.panic`` + pvpanic gives GUEST_PANICKED;
* ``reboot -f`` typed on the console resets the machine (RESET event, second HM-READY);

Skipped when images/tiny has not been built (``tools/build-tiny-image``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hypermachine.images import Catalogue

pytestmark = pytest.mark.qemu

REPO = Path(__file__).resolve().parents[1]
MARKER = "HM-READY tiny"
BOOT_TIMEOUT = 90.0  # TCG on a busy 2-core host; a quiet host needs ~5 s
QEMU = shutil.which("qemu-system-x86_64")


def _catalogue(tmp: Path) -> Catalogue:
    return Catalogue(REPO / "images" / "catalogue.toml", REPO / "images", tmp / "store")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    img = _catalogue(tmp_path_factory.mktemp("cat")).get("tiny")
    if not img.available:
        pytest.skip("images/tiny is not built: run tools/build-tiny-image")
    return img


class Guest:
    """One QEMU process with a QMP socket, a serial console socket (+ log) and qga."""

    def __init__(self, workdir: Path, argv: list[str]) -> None:
        self.dir = workdir
        self.log = workdir / "serial.log"
        self.qmp_path = workdir / "qmp.sock"
        self.qga_path = workdir / "qga.sock"
        self.serial_path = workdir / "serial.sock"
        self.stderr = workdir / "qemu.stderr"
        full = [
            QEMU or "qemu-system-x86_64",
            "-accel", "tcg",
            "-m", "256",
            "-nodefaults",
            "-display", "none",
            "-no-shutdown",
            "-chardev",
            f"socket,id=ser0,path={self.serial_path},server=on,wait=off,logfile={self.log}",
            "-serial", "chardev:ser0",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-chardev", f"socket,id=qga0,path={self.qga_path},server=on,wait=off",
            "-device", "virtio-serial-pci,id=vser0",
            "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            *argv,
        ]  # fmt: skip
        self.started = time.monotonic()
        self._console: socket.socket | None = None
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=err, stderr=err)

    def serial_text(self) -> str:
        try:
            return self.log.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_serial(self, text: str, count: int = 1, timeout: float = BOOT_TIMEOUT) -> float:
        """Poll the serial log until ``text`` occurs ``count`` times; seconds since start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.serial_text().count(text) >= count:
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{text!r} x{count} not in serial log (qemu rc={self.proc.poll()}):\n"
            f"{self.serial_text()[-3000:]}\nstderr: {self.stderr.read_text()[-2000:]}"
        )

    def wait_socket(self, path: Path, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.proc.poll() is None, self.stderr.read_text()
            assert time.monotonic() < deadline, f"{path} never appeared"
            time.sleep(0.02)

    def type(self, line: str) -> None:
        """Type a line on the serial console.

        The connection stays open for the guest's life: QEMU feeds the UART from the
        socket as its FIFO drains, and drops whatever is unread when the client leaves.
        """
        if self._console is None:
            self.wait_socket(self.serial_path)
            self._console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._console.connect(str(self.serial_path))
            # Read (and drop: the log file has it) what the guest prints: a connected
            # client that never reads stalls the guest's serial output mid-line.
            threading.Thread(target=_drain, args=(self._console,), daemon=True).start()
        self._console.sendall(line.encode() + b"\n")

    def close(self) -> None:
        if self._console is not None:
            self._console.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def boot(tiny: Any, tmp_path: Path) -> Iterator[Any]:
    guests: list[Guest] = []
    counter = iter(range(100))

    def start(extra_append: str = "", machine: str = "q35", devices: tuple[str, ...] = ()) -> Guest:
        work = tmp_path / f"g{next(counter)}"
        work.mkdir()
        overlay = work / "disk.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(tiny.disk),
             str(overlay)],
            check=True,
        )  # fmt: skip
        append = f"{tiny.append} {extra_append}".strip()
        argv = [
            "-machine", machine,
            "-kernel", str(tiny.kernel), "-initrd", str(tiny.initrd), "-append", append,
            "-drive", f"file={overlay},if=virtio,format=qcow2",
        ]  # fmt: skip
        for dev in devices:
            argv += ["-device", dev]
        g = Guest(work, argv)
        guests.append(g)
        return g

    yield start
    for g in guests:
        g.close()


async def _qmp_until(
    guest: Guest,
    events: set[str],
    command: str | None = None,
    type_line: str | None = None,
    timeout: float = BOOT_TIMEOUT,
) -> list[dict[str, Any]]:
    """Connect to QMP, run ``command`` / type ``type_line`` on the console, then collect
    events until one of ``events`` arrives (plus a final query-status)."""
    from qemu.qmp import QMPClient

    guest.wait_socket(guest.qmp_path)
    qmp = QMPClient("hm-test")
    await qmp.connect(str(guest.qmp_path))
    seen: list[dict[str, Any]] = []
    try:
        with qmp.listener() as listener:
            if command:
                await qmp.execute(command)
            if type_line:
                guest.type(type_line)

            async def collect() -> None:
                async for event in listener:
                    seen.append(dict(event))
                    if event["event"] in events:
                        return

            await asyncio.wait_for(collect(), timeout)
        with contextlib.suppress(Exception):
            status = await qmp.execute("query-status")
            seen.append({"event": "_status", "data": status})
    finally:
        await qmp.disconnect()
    return seen


def _qga(path: Path, command: str, timeout: float = 30.0) -> Any:
    """One qemu-ga command over the raw socket, after the guest-sync-delimited handshake."""
    deadline = time.monotonic() + timeout
    sync_id = int(time.time()) % 100000
    while True:
        sync_id += 1
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2.0)
                s.connect(str(path))
                req = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
                s.sendall(b"\xff" + json.dumps(req).encode() + b"\n")
                buf = b""
                while True:  # discard everything up to the 0xFF delimiter, then one reply
                    buf += s.recv(4096) or b""
                    if b"\xff" in buf and b"\n" in buf.split(b"\xff", 1)[1]:
                        break
                reply = json.loads(buf.split(b"\xff", 1)[1].split(b"\n", 1)[0])
                if reply.get("return") != sync_id:
                    raise OSError(f"stale sync reply {reply}")
                s.sendall(json.dumps({"execute": command}).encode() + b"\n")
                buf = b""
                while b"\n" not in buf:
                    chunk = s.recv(4096)
                    if not chunk:
                        raise OSError("qga closed")
                    buf += chunk
                return json.loads(buf.split(b"\n", 1)[0])
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise


def test_boot_console_qga_reboot_powerdown(boot: Any) -> None:
    g = boot()
    ready = g.wait_serial(MARKER)
    print(f"q35 tiny guest ready in {ready:.1f} s")

    # the console shell answers
    g.wait_serial("hm-tiny# ", timeout=30)
    g.type("echo HM-CONSOLE-$((6*7)) $(cat /proc/sys/kernel/hostname)")
    g.wait_serial("HM-CONSOLE-42 hm-tiny", timeout=30)

    # qemu-ga answers over virtio-serial
    assert _qga(g.qga_path, "guest-ping") == {"return": {}}
    info = _qga(g.qga_path, "guest-info")
    assert "version" in info["return"]

    # the base disk is mounted at /mnt (ext4 on /dev/vda, a qcow2 overlay)
    g.type("cat /mnt/README")
    g.wait_serial("HyperMachine tiny base disk", timeout=30)

    # reboot -f from inside resets the machine and the guest comes back
    prompts = g.serial_text().count("hm-tiny# ")
    resets = asyncio.run(_qmp_until(g, {"RESET"}, type_line="reboot -f", timeout=30))
    assert any(e["event"] == "RESET" and e["data"]["guest"] for e in resets), resets
    g.wait_serial(MARKER, count=2)
    g.wait_serial("hm-tiny# ", count=prompts + 1, timeout=60)

    # ACPI power button -> guest powers off -> SHUTDOWN with reason guest-shutdown. A
    # press that comes before the guest's acpid listens is lost: press again, as the
    # server's graceful stop does.
    events: list[dict[str, Any]] = []
    for _ in range(6):
        events += _press_and_collect(g)
        if any(e["event"] == "SHUTDOWN" for e in events):
            break
    shutdown = [e for e in events if e["event"] == "SHUTDOWN"]
    assert shutdown, events
    assert shutdown[0]["data"] == {"guest": True, "reason": "guest-shutdown"}, shutdown
    assert "HM-POWERBUTTON" in g.serial_text()
    status = [e for e in events if e["event"] == "_status"]
    assert status and status[0]["data"]["status"] == "shutdown", events


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


def _press_and_collect(g: Any) -> list[dict[str, Any]]:
    try:
        return asyncio.run(_qmp_until(g, {"SHUTDOWN"}, command="system_powerdown", timeout=15))
    except TimeoutError:
        return []


def test_hm_poweroff_switch(boot: Any) -> None:
    g = boot("hm.poweroff")
    events = asyncio.run(_qmp_until(g, {"SHUTDOWN"}))
    assert MARKER in g.serial_text()
    shutdown = [e for e in events if e["event"] == "SHUTDOWN"]
    assert shutdown and shutdown[0]["data"]["reason"] == "guest-shutdown", events


@pytest.mark.parametrize(
    ("machine", "device"), [("pc", "pvpanic"), ("q35", "pvpanic-pci")], ids=["pc-isa", "q35-pci"]
)
def test_hm_panic_switch_gives_guest_panicked(boot: Any, machine: str, device: str) -> None:
    g = boot("hm.panic", machine=machine, devices=(device,))
    events = asyncio.run(_qmp_until(g, {"GUEST_PANICKED"}))
    assert MARKER in g.serial_text()
    assert any(e["event"] == "GUEST_PANICKED" for e in events), events
