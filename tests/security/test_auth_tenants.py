"""API keys, the auth mode, tenant isolation and the audit log, through the HTTP app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from keyed import Keyed, assert_error, keyed_server

from hypermachine.errors import VmNotFound
from hypermachine.models import VmState

PUBLIC = [
    "/health",
    "/openapi.json",
    "/docs",
    "/docs/static/swagger-ui.css",
    "/.well-known/ai-plugin.json",
    "/agentic/tools/openai",
    "/agentic/tools/mcp",
    "/agentic/ontology",
]
GUARDED = [
    ("GET", "/api/v1/vms"),
    ("POST", "/api/v1/vms"),
    ("GET", "/api/v1/images"),
    ("GET", "/api/v1/vms/vm-none"),
    ("POST", "/api/v1/vms/vm-none/script"),
    ("POST", "/agentic/execute"),
    ("POST", "/mcp"),
    ("GET", "/api/v1/keys"),
    ("GET", "/api/v1/audit"),
    ("GET", "/metrics"),
    ("GET", "/no/such/route"),
]
VM = {"name": "box", "image": "tiny", "memory_mb": 512, "disk_gb": 1}
MCP_HEADERS = {"Accept": "application/json", "MCP-Protocol-Version": "2026-07-28"}
MCP_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


@pytest.fixture
async def keyed(data_dir: Path, compile_cache: Path, tiny: Path) -> Any:
    async with keyed_server(data_dir, compile_cache) as k:
        yield k


async def test_open_embedded_default_says_so(client: Any) -> None:
    health = await (await client.get("/health")).get_json()
    assert health["auth"] == "open"
    plugin = await (await client.get("/.well-known/ai-plugin.json")).get_json()
    assert plugin["auth"] == {"type": "none"}
    response = await client.get("/api/v1/vms")
    assert response.status_code == 200 and "RateLimit-Limit" not in response.headers


async def test_public_documents_answer_without_a_key(keyed: Keyed) -> None:
    for path in PUBLIC:
        status, _, _ = await keyed.call("GET", path, None)
        assert status == 200, path
    _, health, _ = await keyed.call("GET", "/health", None)
    assert health["auth"] == "keys"
    _, plugin, _ = await keyed.call("GET", "/.well-known/ai-plugin.json", None)
    assert plugin["auth"]["type"] == "user_http" and plugin["api"]["is_user_authenticated"]


@pytest.mark.parametrize("key", [None, "hm_wrong", "", "Basic abc"])
async def test_everything_else_needs_a_valid_key(keyed: Keyed, key: str | None) -> None:
    for method, path in GUARDED:
        headers = {} if key is None else {"Authorization": f"Bearer {key}", "X-API-Key": key}
        status, body, headers_out = await keyed.call(method, path, None, headers=headers)
        assert status == 401, (method, path, body)
        assert_error(body, "UNAUTHORIZED")
        assert headers_out["WWW-Authenticate"].startswith("Bearer ")


async def test_both_headers_and_revocation(keyed: Keyed) -> None:
    for headers in ({"Authorization": f"Bearer {keyed.alice}"}, {"X-API-Key": keyed.alice}):
        status, _, _ = await keyed.call("GET", "/api/v1/vms", None, headers=headers)
        assert status == 200
    store = keyed.services.security.store
    alice_id = next(k.id for k in store.list_keys() if k.name == "alice")
    status, _, _ = await keyed.call("DELETE", f"/api/v1/keys/{alice_id}", keyed.alice)
    assert status == 403  # not an admin
    status, _, _ = await keyed.call("DELETE", f"/api/v1/keys/{alice_id}", keyed.admin)
    assert status == 204
    status, body, headers = await keyed.call("GET", "/api/v1/vms", keyed.alice)
    assert status == 401 and "WWW-Authenticate" in headers
    assert_error(body, "UNAUTHORIZED")
    status, body, _ = await keyed.call("DELETE", "/api/v1/keys/key-nope", keyed.admin)
    assert status == 404
    assert_error(body, "KEY_NOT_FOUND")


async def test_admin_manages_keys_over_rest(keyed: Keyed) -> None:
    status, body, _ = await keyed.call("GET", "/api/v1/keys", keyed.bob)
    assert status == 403
    assert_error(body, "FORBIDDEN")
    status, created, headers = await keyed.call(
        "POST", "/api/v1/keys", keyed.admin, json={"name": "carol", "tier": "pro"}
    )
    assert status == 201 and headers["Cache-Control"] == "no-store"
    assert created["key"].startswith("hm_") and len(created["key"]) >= 3 + 43
    assert created["tenant"] == "carol" and created["tier"] == "pro" and not created["admin"]
    status, _, headers = await keyed.call("GET", "/api/v1/vms", created["key"])
    assert status == 200 and headers["RateLimit-Limit"] == "600"
    status, listing, _ = await keyed.call("GET", "/api/v1/keys", keyed.admin)
    assert status == 200
    assert {k["name"] for k in listing["keys"]} == {"alice", "bob", "ops", "carol"}
    text = json.dumps(listing)
    for secret in (keyed.alice, keyed.bob, keyed.admin, created["key"]):
        assert secret not in text
    status, body, _ = await keyed.call(
        "POST", "/api/v1/keys", keyed.admin, json={"name": "x", "tier": "platinum"}
    )
    assert status == 400
    assert_error(body, "VALIDATION_ERROR")


async def test_store_keeps_only_a_hash(keyed: Keyed) -> None:
    database = keyed.services.settings.database_file
    raw = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    for secret in (keyed.alice, keyed.bob, keyed.admin):
        assert secret.encode() not in raw
        assert secret[3:].encode() not in raw


async def _create(keyed: Keyed, key: str, name: str = "box", **extra: Any) -> dict[str, Any]:
    status, vm, _ = await keyed.call("POST", "/api/v1/vms", key, json={**VM, "name": name}, **extra)
    assert status == 201, vm
    return dict(vm)


async def test_cross_tenant_is_indistinguishable_from_missing(keyed: Keyed) -> None:
    vm = await _create(keyed, keyed.alice)
    assert vm["tenant"] == "alice"
    vm_id = vm["id"]
    for method, suffix, body in [
        ("GET", "", None),
        ("DELETE", "?force=true", None),
        ("POST", "/start", {}),
        ("POST", "/stop", {"force": True}),
        ("POST", "/pause", {}),
        ("POST", "/resume", {}),
        ("POST", "/reboot", {}),
        ("GET", "/metrics", None),
        ("GET", "/wait?state=stopped&timeout=1", None),
        ("POST", "/script", {"language": "rhai", "code": "vm.state"}),
    ]:
        kwargs = {} if body is None else {"json": body}
        theirs = await keyed.call(method, f"/api/v1/vms/{vm_id}{suffix}", keyed.bob, **kwargs)
        missing = await keyed.call(method, f"/api/v1/vms/vm-0{suffix}", keyed.bob, **kwargs)
        assert theirs[0] == missing[0] == 404, (method, suffix, theirs[1])
        assert_error(theirs[1], "VM_NOT_FOUND")
        assert theirs[1]["error"]["message"].replace(vm_id, "X") == missing[1]["error"][
            "message"
        ].replace("vm-0", "X")
    _, bobs, _ = await keyed.call("GET", "/api/v1/vms", keyed.bob)
    assert bobs["vms"] == []
    _, alices, _ = await keyed.call("GET", "/api/v1/vms", keyed.alice)
    assert [v["id"] for v in alices["vms"]] == [vm_id]
    _, everyone, _ = await keyed.call("GET", "/api/v1/vms", keyed.admin)
    assert [v["id"] for v in everyone["vms"]] == [vm_id]
    status, _, _ = await keyed.call("GET", f"/api/v1/vms/{vm_id}", keyed.admin)
    assert status == 200
    # Nothing bob tried changed alice's VM.
    # untouched by bob: its creation (started before his calls) ends in "stopped"
    await keyed.services.manager.wait_for(vm_id, {VmState.STOPPED}, 30)


async def test_cross_tenant_tool_calls_and_mcp(keyed: Keyed) -> None:
    vm_id = (await _create(keyed, keyed.alice))["id"]
    for name in ("get_vm", "start_vm", "delete_vm", "get_vm_metrics", "run_vm_script"):
        args: dict[str, Any] = {"vm_id": vm_id}
        if name == "run_vm_script":
            args["code"] = "vm.state"
        status, answer, _ = await keyed.call(
            "POST", "/agentic/execute", keyed.bob, json={"name": name, "arguments": args}
        )
        assert status == 200 and answer["error"]["code"] == "VM_NOT_FOUND", (name, answer)
        params = {"name": name, "arguments": args, "_meta": MCP_META}
        status, reply, _ = await keyed.call(
            "POST",
            "/mcp",
            keyed.bob,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params},
            headers={**MCP_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": name},
        )
        assert status == 200, reply
        assert reply["result"]["structuredContent"]["error"]["code"] == "VM_NOT_FOUND"
    status, answer, _ = await keyed.call(
        "POST", "/agentic/execute", keyed.bob, json={"name": "list_vms", "arguments": {}}
    )
    assert answer["result"]["vms"] == [], answer
    status, answer, _ = await keyed.call(
        "POST",
        "/agentic/execute",
        keyed.alice,
        json={"name": "get_vm", "arguments": {"vm_id": vm_id}},
    )
    assert answer["result"]["id"] == vm_id
    # untouched by bob: its creation (started before his calls) ends in "stopped"
    await keyed.services.manager.wait_for(vm_id, {VmState.STOPPED}, 30)


async def test_idempotency_keys_are_per_tenant(keyed: Keyed) -> None:
    first = await _create(keyed, keyed.alice, headers={"Idempotency-Key": "same"})
    status, replay, headers = await keyed.call(
        "POST", "/api/v1/vms", keyed.alice, json={**VM, "name": "box"},
        headers={"Idempotency-Key": "same"},
    )  # fmt: skip
    assert status == 201 and replay["id"] == first["id"] and headers["Idempotent-Replayed"]
    theirs = await _create(keyed, keyed.bob, "box2", headers={"Idempotency-Key": "same"})
    assert theirs["id"] != first["id"] and theirs["tenant"] == "bob"


async def test_script_host_calls_carry_the_caller(keyed: Keyed) -> None:
    vm_id = (await _create(keyed, keyed.alice))["id"]
    code = 'let s = vm.state; try { vm.pause() } catch (e) { s += " " + e } s'
    status, answer, _ = await keyed.call(
        "POST", f"/api/v1/vms/{vm_id}/script", keyed.alice, json={"language": "rhai", "code": code}
    )
    assert status == 200, answer
    assert "INVALID_STATE" in answer["result"], answer
    _, audit, _ = await keyed.call("GET", "/api/v1/audit", keyed.admin)
    alice_id = next(k.id for k in keyed.services.security.store.list_keys() if k.name == "alice")
    pause = next(e for e in audit["entries"] if e["operation"] == "pause_vm")
    assert pause == {**pause, "key_id": alice_id, "tenant": "alice", "target": vm_id,
                     "outcome": "INVALID_STATE"}  # fmt: skip
    # A binding made for bob cannot reach alice's VM, even if handed its id.
    bob = keyed.services.security.store.caller_for(keyed.bob)
    assert bob is not None
    dispatcher = keyed.client.app.extensions["hypermachine.dispatcher"]
    with pytest.raises(VmNotFound):
        await dispatcher.call("run_vm_script", bob, {"vm_id": vm_id, "code": "vm.state"})


async def test_audit_log_records_mutations_without_secrets(keyed: Keyed) -> None:
    vm_id = (await _create(keyed, keyed.alice))["id"]
    await keyed.call("DELETE", f"/api/v1/vms/{vm_id}", keyed.bob)  # refused: not bob's
    await keyed.call("DELETE", f"/api/v1/vms/{vm_id}", keyed.alice)
    await keyed.call("POST", "/api/v1/keys", keyed.admin, json={"name": "dave"})
    status, _, _ = await keyed.call("GET", "/api/v1/audit", keyed.alice)
    assert status == 403
    status, audit, _ = await keyed.call("GET", "/api/v1/audit?limit=3", keyed.admin)
    assert status == 200
    keys = {k.name: k.id for k in keyed.services.security.store.list_keys()}
    got = [(e["key_id"], e["operation"], e["target"], e["outcome"]) for e in audit["entries"]]
    assert got == [
        (keys["ops"], "create_key", keys["dave"], "ok"),
        (keys["alice"], "delete_vm", vm_id, "ok"),
        (keys["bob"], "delete_vm", vm_id, "VM_NOT_FOUND"),
    ]
    _, older, _ = await keyed.call(
        "GET", f"/api/v1/audit?cursor={audit['next_cursor']}", keyed.admin
    )
    assert [(e["operation"], e["outcome"]) for e in older["entries"]][:1] == [("create_vm", "ok")]
    everything = json.dumps(audit) + json.dumps(older)
    for secret in (keyed.alice, keyed.bob, keyed.admin):
        assert secret not in everything and secret[3:13] not in everything


async def test_event_stream_shows_only_the_callers_vms(keyed: Keyed) -> None:
    from hypermachine.operations.catalogue import visibility
    from hypermachine.security.caller import Caller

    alices = await _create(keyed, keyed.alice, name="a-box")
    bobs = await _create(keyed, keyed.bob, name="b-box")
    log = keyed.services.manager.events.after(0)
    assert {e.vm_id for e in log} >= {alices["id"], bobs["id"]}
    async with keyed.client.app.app_context():
        manager = keyed.services.manager
        alice = Caller(key_id="k1", tenant="alice", tier="free", admin=False)
        as_alice = visibility(alice, manager)
        as_admin = visibility(Caller(key_id="k2", tenant="ops", tier="free", admin=True), manager)
        seen_by_alice = {e.vm_id for e in log if as_alice(e)}
        seen_by_admin = {e.vm_id for e in log if as_admin(e)}
    assert alices["id"] in seen_by_alice and bobs["id"] not in seen_by_alice
    assert {alices["id"], bobs["id"]} <= seen_by_admin
