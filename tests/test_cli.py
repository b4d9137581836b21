"""The command line: scripts locally and against a server's VM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from realserver import Server


def hm(*args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["--data-dir", str(data_dir)] if data_dir else []
    return subprocess.run(
        [sys.executable, "-m", "hypermachine.cli", *prefix, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_script_runs_locally(tmp_path: Path) -> None:
    script = tmp_path / "s.rhai"
    script.write_text('print("hi"); 40 + args.n')
    done = hm("script", "run", str(script), "--args", '{"n": 2}')
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["hi", '{"result": 42, "type": "i64"}']
    script.write_text("let x = ;")
    failed = hm("script", "run", str(script))
    assert failed.returncode == 1 and "syntax" in failed.stderr.lower()


def test_script_runs_against_a_vm(server: Server, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.url) as client:
        body = {"name": "cli", "image": "tiny", "disk_gb": 1, "wait": True}
        vm = client.post("/api/v1/vms", json=body).json()
    script = tmp_path / "s.rhai"
    script.write_text("print(vm.name); vm.state")
    done = hm("script", "run", str(script), "--vm", vm["id"], "--server", server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["cli", '{"result": "stopped", "type": "string"}']
    missing = hm("script", "run", str(script), "--vm", "vm-000000000000", "--server", server.url)
    assert missing.returncode == 1 and "VM_NOT_FOUND" in missing.stderr


def test_image_list_and_bad_config(tmp_path: Path) -> None:
    listed = hm("image", "list", data_dir=tmp_path)
    assert listed.returncode == 0
    assert any(line.startswith("tiny ") for line in listed.stdout.splitlines())
    bad = subprocess.run(
        [sys.executable, "-m", "hypermachine.cli", "image", "list"],
        capture_output=True, text=True, env={"HM_PROT": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert bad.returncode == 2 and "unknown setting" in bad.stderr
