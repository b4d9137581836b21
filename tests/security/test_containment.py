"""Scripts and web pages cannot take the server down or over (issue 12's script and web
boundaries): hostile arguments to every ``vm.*`` method, fair script slots, host calls
under the key's rate limit, the open server's ``Host`` check, ``Origin`` on MCP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from keyed import Keyed, assert_error, keyed_server

from hypermachine.sandbox.hostapi import VM_OBJECT

VM = {"image": "tiny", "memory_mb": 512, "disk_gb": 1}
NAN = "(0.0 / 0.0)"
# Arguments no vm.* method accepts: wrong types, out of range, NaN, huge, unknown keys.
HOSTILE: dict[str, list[str]] = {
    "info": ["1", '"x"'],
    "start": ["1", "#{force: true}"],
    "pause": ["()"],
    "resume": ["[1, 2]"],
    "reboot": ["#{}"],
    "metrics": ['"all"'],
    "stop": [
        "#{timeout_s: -1}",
        f"#{{timeout_s: {NAN}}}",
        "#{timeout_s: 1e300}",
        '#{force: "yes"}',
        "#{bogus: 1}",
        "42",
        "#{force: true}, 2",
    ],
    "wait_for": [
        '"running", -1',
        f'"running", {NAN}',
        '"nowhere", 10',
        "42, 10",
        '["running"], "soon"',
        '"running", 1, 2',
    ],
    "qmp": ['"migrate", #{uri: "exec:sh"}', "42", '"query-status", 42', '"x".pad(10000, "y")'],
    "exec": ["42", "[]", "[1, 2]", "#{}", '[""]', '"x".pad(100000, "y").split("")'],
    "read_file": ["42", '"relative/path"', '"/etc/" + "a".pad(5000, "a")', "[]"],
    "write_file": ['"/tmp/x", 42', '42, "x"', '"/tmp/x"', '"relative", "x"'],
}


@pytest.fixture
async def keyed(data_dir: Path, compile_cache: Path, tiny: Path) -> Any:
    async with keyed_server(
        data_dir, compile_cache, max_concurrent_scripts=4, max_scripts_per_tenant=2
    ) as k:
        yield k


async def make_vm(keyed: Keyed, key: str, name: str) -> str:
    status, vm, _ = await keyed.call("POST", "/api/v1/vms", key, json={**VM, "name": name})
    assert status == 201, vm
    return str(vm["id"])


async def script(keyed: Keyed, key: str, vm_id: str, code: str, **extra: Any) -> tuple[int, Any]:
    status, body, _ = await keyed.call(
        "POST", f"/api/v1/vms/{vm_id}/script", key, json={"code": code, **extra}
    )
    return status, body


def test_the_sweep_covers_every_vm_method() -> None:
    assert set(HOSTILE) == set(VM_OBJECT.methods)


async def test_hostile_arguments_to_every_vm_method_are_script_errors(keyed: Keyed) -> None:
    vm_id = await make_vm(keyed, keyed.admin, "target")
    for method, cases in HOSTILE.items():
        for args in cases:
            status, body = await script(
                keyed, keyed.admin, vm_id, f"vm.{method}({args})", limits={"timeout_ms": 5000}
            )
            assert status in (400, 422), (method, args, status, body)
            assert body["error"]["code"].startswith("SCRIPT_"), (method, args, body)
            status, health, _ = await keyed.call("GET", "/health", None)
            assert status == 200 and health["status"] == "healthy"
    _, vm, _ = await keyed.call("GET", f"/api/v1/vms/{vm_id}", keyed.admin)
    assert vm["state"] == "stopped"  # nothing hostile did anything


async def test_a_refused_argument_names_its_field(keyed: Keyed) -> None:
    vm_id = await make_vm(keyed, keyed.alice, "named")
    status, body = await script(keyed, keyed.alice, vm_id, "vm.stop(#{timeout_s: -1})")
    assert status == 422 and body["error"]["code"] == "SCRIPT_RUNTIME_ERROR", body
    assert "timeout_s" in body["error"]["message"], body


async def test_one_tenant_cannot_take_every_script_slot(keyed: Keyed) -> None:
    alices = await make_vm(keyed, keyed.alice, "a-slots")
    bobs = await make_vm(keyed, keyed.bob, "b-slots")
    finished: list[str] = []
    scripts = keyed.services.scripts

    async def alice(n: int) -> None:
        status, body = await script(keyed, keyed.alice, alices, "sleep(1500); 1")
        assert status == 200, body
        finished.append(f"alice-{n}")

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(alice, n)
        with trio.fail_after(30):
            while scripts._share("alice").borrowed_tokens < 2:
                await trio.sleep(0.01)  # no event to wait on: the limiter's own count
        status, body = await script(keyed, keyed.bob, bobs, "40 + 2")
        assert status == 200 and body["result"] == 42, body
        finished.append("bob")
    assert finished[0] == "bob", finished  # bob did not queue behind alice's four


async def test_queueing_for_a_slot_counts_toward_the_deadline(keyed: Keyed) -> None:
    vm_id = await make_vm(keyed, keyed.alice, "queued")
    scripts = keyed.services.scripts
    results: dict[str, Any] = {}

    async def long(n: int) -> None:
        results[f"long-{n}"] = await script(keyed, keyed.alice, vm_id, "sleep(3000); 1")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(long, 0)
        nursery.start_soon(long, 1)
        with trio.fail_after(30):
            while scripts._share("alice").borrowed_tokens < 2:
                await trio.sleep(0.01)
        results["short"] = await script(keyed, keyed.alice, vm_id, "1", limits={"timeout_ms": 500})
    status, body = results["short"]
    assert status == 422 and body["error"]["code"] == "SCRIPT_LIMIT_EXCEEDED", body
    assert all(results[f"long-{n}"][0] == 200 for n in range(2))


async def test_host_calls_count_against_the_keys_rate_limit(keyed: Keyed) -> None:
    vm_id = await make_vm(keyed, keyed.alice, "metered")
    code = "let n = 0; for i in 0..100 { let s = vm.state; n += 1; } n"
    status, body = await script(keyed, keyed.alice, vm_id, code)
    assert status == 422, body
    assert "RATE_LIMITED" in body["error"]["message"], body
    status, body, headers = await keyed.call("GET", "/api/v1/vms", keyed.alice)
    assert status == 429 and headers["Retry-After"], body


async def test_an_open_server_serves_only_loopback_hosts(client: Any) -> None:
    for host in ("localhost", "localhost:8080", "127.0.0.1:8080", "[::1]:8080"):
        response = await client.get("/api/v1/vms", headers={"Host": host})
        assert response.status_code == 200, host
    for host in ("attacker.example", "attacker.example:8080", "127.0.0.1.nip.io", "10.0.2.2"):
        response = await client.get("/api/v1/vms", headers={"Host": host})
        assert response.status_code == 403, host
        assert_error(await response.get_json(), "FORBIDDEN")


@pytest.mark.hm_settings(allowed_origins=("http://vms.example:8080",))
async def test_configured_origins_and_hosts_are_allowed(client: Any) -> None:
    response = await client.get("/api/v1/vms", headers={"Host": "vms.example:8080"})
    assert response.status_code == 200
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json", "MCP-Protocol-Version": "2026-07-28"}
    ok = await client.post(
        "/mcp", json=body, headers={**headers, "Origin": "http://vms.example:8080"}
    )
    assert ok.status_code != 403
    refused = await client.post(
        "/mcp", json=body, headers={**headers, "Origin": "http://attacker.example"}
    )
    assert refused.status_code == 403
