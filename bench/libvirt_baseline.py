"""libvirt's ``virsh create`` of the tiny guest, measured in this run (the baseline of
POST -> QMP ``running``). Installs libvirt with apt when it is missing and starts its
daemons (no systemd here); returns None, saying why, when it cannot.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "images" / "tiny"
URI = "qemu:///system"
_QEMU_LOGS = Path("/var/log/libvirt/qemu")
_PACKAGES = ["libvirt-daemon-system", "libvirt-daemon-driver-qemu", "libvirt-clients"]
_APT_TRIES = 30  # another apt may hold the lock: retry, 10 s apart

_DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><model type='virtio'/></interface>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _install() -> str | None:
    """apt-get install libvirt; None when done, else why not."""
    if os.geteuid() != 0:
        return "not root: cannot install libvirt"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *_PACKAGES]
    for _ in range(_APT_TRIES):
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return None
        if "Could not get lock" not in done.stderr and "lock" not in done.stderr.lower():
            return f"apt-get failed: {done.stderr.strip()[-300:]}"
        time.sleep(10)
    return "apt's lock stayed taken"


def _daemons(started: list[int]) -> str | None:
    """libvirtd and virtlogd running (started here when not, their pids appended to
    ``started``); None when they answer."""
    for daemon in ("virtlogd", "libvirtd"):
        if subprocess.run(["pgrep", "-x", daemon], capture_output=True).returncode != 0:
            subprocess.run([daemon, "--daemon"], check=False)
            with contextlib.suppress(OSError, ValueError):
                started.append(int(Path(f"/run/{daemon}.pid").read_text().strip()))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the daemon has no readiness signal: ask it
        if subprocess.run(["virsh", "-c", URI, "version"], capture_output=True).returncode == 0:
            return None
        time.sleep(0.1)
    return "libvirtd did not answer"


def _ready(started: list[int]) -> str | None:
    """None when virsh can create domains here, else the reason."""
    if shutil.which("virsh") is None or not Path("/etc/libvirt/qemu.conf").exists():
        why = _install()
        if why is not None:
            return why
    return _daemons(started)


def virsh_create_ms(runs: int) -> tuple[float | None, float | None, str]:
    """:func:`_measure`, then the daemons this run started are ended (by pid)."""
    started: list[int] = []
    try:
        why = _ready(started)
        return (None, None, why) if why is not None else _measure(runs)
    finally:
        for pid in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _launch_started(name: str) -> float:
    """When libvirt began launching QEMU: the first line of the domain's QEMU log,
    ``2026-12-01 09:52:57.194+0000: starting up …`` (UTC)."""
    first = (_QEMU_LOGS / f"{name}.log").read_text().splitlines()[0]
    stamp = datetime.strptime(first.split(": starting up")[0], "%Y-%m-%d %H:%M:%S.%f%z")
    return stamp.timestamp()


def _measure(runs: int) -> tuple[float | None, float | None, str]:
    """Median milliseconds of ``virsh create`` of the tiny guest (it returns once the
    domain runs), the median of its part after libvirt began launching QEMU (the rest is
    libvirt re-probing QEMU's capabilities, which it does on every call on a host whose
    /dev/kvm is present but unusable), and a note (the reason when not measured)."""
    samples, launches = [], []
    with tempfile.TemporaryDirectory(prefix="hm-virsh-") as tmp:
        scratch = Path(tmp)
        scratch.chmod(0o755)  # libvirt's QEMU runs as libvirt-qemu
        for n in range(runs):
            disk = scratch / f"disk-{n}.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(TINY / "disk.qcow2"),
                 "-F", "qcow2", str(disk), "1G"],
                check=True,
            )  # fmt: skip
            name = f"hm-bench-{os.getpid()}-{n}"
            xml = scratch / f"{name}.xml"
            xml.write_text(
                _DOMAIN.format(
                    name=name,
                    kernel=TINY / "vmlinux",
                    initrd=TINY / "initrd.img",
                    disk=disk,
                    console=scratch / f"{name}.log",
                )
            )
            t0 = time.monotonic()
            done = subprocess.run(
                ["virsh", "-c", URI, "create", str(xml)], capture_output=True, text=True
            )
            elapsed, ended = time.monotonic() - t0, time.time()
            subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True)
            if done.returncode != 0:
                return None, None, f"virsh create failed: {done.stderr.strip()[-300:]}"
            samples.append(elapsed * 1000)
            launches.append((ended - _launch_started(name)) * 1000)
    note = f"libvirt 9.0, median of {runs}, measured in this run"
    return statistics.median(samples), statistics.median(launches), note
