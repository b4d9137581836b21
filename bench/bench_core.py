"""Core benchmark: VM start latency against QEMU launched by hand, and API latency.

Prints each figure next to what it is measured against:
- POST /api/v1/vms {"start":true} -> the guest's ready marker on the serial console,
  beside the very same QEMU command line launched by hand in this run (ratio, target <= 1.15);
- POST -> QMP `running` (target <= 150 ms) beside libvirt's `virsh create` of the same
  guest, measured in this run (libvirt_baseline.py installs libvirt when missing);
- GET list and GET one VM with 50 VMs defined (median, target < 10 ms);
- the script endpoint's round trip for ``print("hi")`` (median, target <= 5 ms).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import libvirt_baseline  # noqa: E402

from realserver import Server, free_port  # noqa: E402

MARKER = b"HM-READY"
RUNS = 3


def _wait_marker(log: Path, deadline_s: float = 120) -> float:
    """Seconds until ``MARKER`` shows in ``log`` (polled: a file has no event)."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if log.exists() and MARKER in log.read_bytes():
            return time.monotonic()
        time.sleep(0.005)
    raise TimeoutError(f"no {MARKER!r} in {log}")


def _hand_argv(api_argv: list[str], scratch: Path) -> list[str]:
    """The API's QEMU command line, launched by hand: not paused, no QMP, the serial
    console to a file, and every per-VM socket in ``scratch``."""
    argv: list[str] = []
    args = iter(api_argv)
    for arg in args:
        if arg in ("-S",):
            continue
        if arg in ("-pidfile", "-mon"):
            next(args)
            continue
        if arg == "-chardev":
            spec = next(args)
            if spec.startswith("socket,id=qmp,"):
                continue
            if spec.startswith("socket,id=serial0,"):
                spec = f"file,id=serial0,path={scratch / 'console.log'}"
            else:
                spec = re.sub(r"path=[^,]*/([^/,]+)", rf"path={scratch}/\1", spec)
            argv += [arg, spec]
            continue
        argv.append(arg)
    return argv


def bench_boot(client: httpx.Client, data_dir: Path) -> None:
    api_times, running_times, hand_times = [], [], []
    for n in range(RUNS):
        t0 = time.monotonic()
        vm = client.post(
            "/api/v1/vms",
            json={"name": f"boot-{n}", "image": "tiny", "memory_mb": 512, "disk_gb": 1,
                  "start": True, "wait": True},
        ).json()  # fmt: skip
        running_times.append(time.monotonic() - t0)
        assert vm["state"] == "running", vm
        api_times.append(_wait_marker(data_dir / "vms" / vm["id"] / "console.log") - t0)
        argv = Path(f"/proc/{vm['pid']}/cmdline").read_bytes().split(b"\0")[:-1]
        client.delete(f"/api/v1/vms/{vm['id']}?force=true")

        with tempfile.TemporaryDirectory(prefix="hm-bench-") as scratch:
            by_hand = _hand_argv([a.decode() for a in argv], Path(scratch))
            # The VM's disk went with the VM: give the hand run its own overlay.
            disk = Path(scratch) / "disk.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                 str(REPO / "images/tiny/disk.qcow2"), "-F", "qcow2", str(disk)],
                check=True,
            )  # fmt: skip
            by_hand = [a.replace(str(data_dir / "vms" / vm["id"] / "disk.qcow2"), str(disk))
                       for a in by_hand]  # fmt: skip
            t0 = time.monotonic()
            proc = subprocess.Popen(by_hand, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                hand_times.append(_wait_marker(Path(scratch) / "console.log") - t0)
            finally:
                proc.kill()
                proc.wait()

    api, hand, running = (statistics.median(x) for x in (api_times, hand_times, running_times))
    print(f"boot to ready marker (median of {RUNS}):")
    print(f"  via API (POST start:true)   {api * 1000:8.0f} ms")
    print(f"  same QEMU argv by hand      {hand * 1000:8.0f} ms")
    print(f"  ratio API / by hand         {api / hand:8.2f}   (target <= 1.15)")
    print(f"POST -> QMP running           {running * 1000:8.0f} ms   (target <= 150 ms)")
    virsh_ms, launch_ms, note = libvirt_baseline.virsh_create_ms(RUNS)
    if virsh_ms is None or launch_ms is None:
        print(f"virsh create                       -   (not measured: {note})")
        return
    print(f"virsh create (same guest)     {virsh_ms:8.0f} ms   ({note}; "
          f"ratio POST / virsh {running * 1000 / virsh_ms:.3f})")  # fmt: skip
    print(f"  of which launching QEMU     {launch_ms:8.0f} ms   (the rest: libvirt re-probing "
          f"QEMU; ratio POST / launch {running * 1000 / launch_ms:.2f})")  # fmt: skip


def bench_api(client: httpx.Client) -> None:
    ids = []
    for n in range(50):
        body = {"name": f"idle-{n}", "image": "tiny", "disk_gb": 1, "wait": True}
        ids.append(client.post("/api/v1/vms", json=body).json()["id"])
    for label, path in (("list 50 VMs", "/api/v1/vms"), ("get one VM", f"/api/v1/vms/{ids[25]}")):
        samples = []
        for _ in range(200):
            t0 = time.perf_counter()
            response = client.get(path)
            samples.append(time.perf_counter() - t0)
            assert response.status_code == 200
        median = statistics.median(samples) * 1000
        print(f"{label:<29} {median:8.2f} ms median (target < 10 ms, ratio {median / 10:.2f})")
    script = {"language": "rhai", "code": 'print("hi")'}
    samples = []
    for _ in range(200):
        t0 = time.perf_counter()
        response = client.post(f"/api/v1/vms/{ids[0]}/script", json=script)
        samples.append(time.perf_counter() - t0)
        assert response.json()["output"] == ["hi"]
    median = statistics.median(samples) * 1000
    label = 'script print("hi") round trip'
    print(f"{label:<29} {median:8.2f} ms median (target <= 5 ms, ratio {median / 5:.2f})")
    for vm_id in ids:
        client.delete(f"/api/v1/vms/{vm_id}")


def main() -> int:
    print(f"host: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="hm-bench-") as tmp:
        data_dir = Path(tmp)
        server = Server(data_dir, free_port())
        server.start()
        try:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                health = client.get("/health").json()
                print(f"accelerator: {health['accelerator']} ({health['accelerator_reason']})")
                bench_boot(client, data_dir)
                bench_api(client)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
