"""``hypermachine vm …`` as a user types it, against the real server and a guest it creates.

The module's VM is made by the CLI itself (``create --start --wait``); the tests run
in file order and the last one stops and deletes it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from clientlive import CLI, Live, env, hm, ok, wait_for_log

pytestmark = pytest.mark.qemu

NAME = "cli-vm"


def read_until(proc: subprocess.Popen[bytes], text: bytes, timeout: float = 60) -> bytes:
    """What ``proc`` printed up to ``text`` (without waiting for it to end)."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and proc.poll() is None, f"{text!r} not printed: {seen[-500:]!r}"
        if select.select([proc.stdout], [], [], left)[0]:
            seen += os.read(proc.stdout.fileno(), 65536)
    return seen


@pytest.fixture(scope="module")
def vm(live: Live) -> Iterator[dict[str, Any]]:
    out = ok(live, "vm", "create", NAME, "--image", "tiny", "--memory", "512", "--disk", "1",
             "--label", "suite=cli", "--start", "--wait", "-o", "json")  # fmt: skip
    created = json.loads(out)
    assert ok(live, "vm", "exec", "--wait-agent", "120", NAME, "--", "true") == ""
    with live.client() as client:
        wait_for_log(client.vms.get(NAME), "HM-READY")
    yield created


def test_create_started_waits_and_lists(live: Live, vm: dict[str, Any]) -> None:
    assert (vm["name"], vm["state"], vm["memory_mb"]) == (NAME, "running", 512)
    header, *rows = ok(live, "vm", "list").splitlines()
    assert header.split() == ["ID", "NAME", "STATE", "CPUS", "MEMORY", "IP", "AGE"]
    row = next(r.split() for r in rows if vm["id"] in r)
    assert row[1:6] == [NAME, "running", "1", "512", "MiB"]
    assert "\x1b[" not in header + "".join(rows), "colours when stdout is not a terminal"
    assert vm["id"] in ok(live, "vm", "list", "-q").split()
    assert vm["id"] not in ok(live, "vm", "list", "-q", "--state", "stopped").split()
    listed = json.loads(ok(live, "vm", "list", "--label", "suite=cli", "--json"))
    assert [v["id"] for v in listed] == [vm["id"]]
    assert json.loads(ok(live, "vm", "get", NAME, "-o", "json"))["id"] == vm["id"]
    assert "state        running" in ok(live, "vm", "get", vm["id"])


def test_exec_streams_output_and_exits_with_the_commands_code(live: Live, vm: object) -> None:
    proc = subprocess.Popen(
        [*CLI, "vm", "exec", NAME, "--", "sh", "-c", "echo one; sleep 3; echo two; exit 3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(live),
    )  # fmt: skip
    assert read_until(proc, b"one\n") == b"one\n"
    assert proc.poll() is None, "the first line came only at the end"
    rest, _ = proc.communicate(timeout=120)
    assert (rest, proc.returncode) == (b"two\n", 3)
    piped = hm(live, "vm", "exec", "-i", NAME, "--", "sh", "-c", "cat; echo oops >&2", stdin="in\n")
    misplaced = hm(live, "vm", "exec", NAME, "--timeout", "5", "--", "true")
    assert misplaced.returncode == 1 and "options go before the VM" in misplaced.stderr
    assert (piped.returncode, piped.stdout, piped.stderr) == (0, "in\n", "oops\n")
    as_json = hm(live, "vm", "exec", "-o", "json", NAME, "--", "sh", "-c", "echo j; exit 5")
    assert as_json.returncode == 5
    assert json.loads(as_json.stdout)["stdout"] == "j\n"


def test_cp_both_ways(live: Live, vm: object, tmp_path: Path) -> None:
    sent = tmp_path / "sent.bin"
    sent.write_bytes(bytes(range(256)) * 100)
    ok(live, "vm", "cp", str(sent), f"{NAME}:/tmp/cp.bin")
    back = tmp_path / "back.bin"
    ok(live, "vm", "cp", f"{NAME}:/tmp/cp.bin", str(back))
    assert back.read_bytes() == sent.read_bytes()
    to_stdout = subprocess.run(
        [*CLI, "vm", "cp", f"{NAME}:/tmp/cp.bin", "-"], capture_output=True, env=env(live),
        timeout=120,
    )  # fmt: skip
    assert to_stdout.stdout == sent.read_bytes()
    both_local = hm(live, "vm", "cp", str(sent), str(back))
    assert both_local.returncode == 1 and "VALIDATION_ERROR" in both_local.stderr


def test_logs_and_logs_follow(live: Live, vm: object) -> None:
    assert "HM-READY tiny" in ok(live, "vm", "logs", NAME).splitlines()
    follow = subprocess.Popen(
        [*CLI, "vm", "logs", "-f", "--tail", "5", NAME], stdout=subprocess.PIPE, env=env(live)
    )
    try:
        ok(live, "vm", "exec", NAME, "--", "sh", "-c", "echo FOLLOWED-LINE > /dev/ttyS0")
        assert b"FOLLOWED-LINE" in read_until(follow, b"FOLLOWED-LINE")
    finally:
        follow.terminate()
        follow.wait(timeout=30)


def test_console_in_a_terminal_sees_the_boot_and_leaves_with_ctrl_bracket(
    live: Live, vm: object
) -> None:
    child = pexpect.spawn(CLI[0], [*CLI[1:], "vm", "console", NAME], env=env(live), timeout=30)
    try:
        child.expect_exact("leave with Ctrl-]")
        child.send("\r")
        child.expect_exact("hm-tiny#")  # typing reaches the guest: the session is live
        ok(live, "vm", "reboot", NAME)
        child.expect_exact("HM-READY", timeout=180)  # the guest booting again, seen live
        child.send("\x1d")
        child.expect_exact("left the console")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    ok(live, "vm", "exec", "--wait-agent", "120", NAME, "--", "true")  # up again for the rest


def test_metrics_events_and_script(live: Live, vm: dict[str, Any], tmp_path: Path) -> None:
    assert "cpu" in ok(live, "vm", "metrics", NAME)
    assert json.loads(ok(live, "vm", "metrics", NAME, "-o", "json"))["vm_id"] == vm["id"]
    events = [json.loads(line) for line in ok(live, "vm", "events", "--vm", NAME, "-o", "json")
              .splitlines()]  # fmt: skip
    assert {"vm.created", "vm.state_changed"} <= {e["type"] for e in events}
    script = tmp_path / "hello.rhai"
    script.write_text('print("hi " + vm.name); args.n * 2')
    out = ok(live, "vm", "script", NAME, str(script), "--args", '{"n": 21}')
    assert out.splitlines() == [f"hi {NAME}", '{"result": 42, "type": "i64"}']


def test_api_errors_exit_1_with_the_code(live: Live, vm: object) -> None:
    missing = hm(live, "vm", "get", "no-such-vm")
    assert missing.returncode == 1 and "VM_NOT_FOUND" in missing.stderr
    running = hm(live, "vm", "start", NAME)
    assert running.returncode == 1 and "INVALID_STATE" in running.stderr
    stranger = hm(live, "vm", "list", "--api-key", "not-a-key")
    assert stranger.returncode == 1 and "UNAUTHORIZED" in stranger.stderr
    nowhere = hm(live, "vm", "list", "--server", "http://127.0.0.1:9")
    assert nowhere.returncode == 1 and "cannot reach http://127.0.0.1:9" in nowhere.stderr
    usage = hm(live, "vm", "create", "x")
    assert usage.returncode == 2 and "--image" in usage.stderr


def test_stop_and_delete(live: Live, vm: dict[str, Any]) -> None:
    stopped = ok(live, "vm", "stop", NAME, "--wait")
    assert "stopped" in stopped.split()
    assert ok(live, "vm", "delete", NAME) == f"deleted {NAME} ({vm['id']})\n"
    assert vm["id"] not in ok(live, "vm", "list", "-q")
