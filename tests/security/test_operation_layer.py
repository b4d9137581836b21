"""Every route is a declared operation, and no face reaches another tenant's VM.

The cross-tenant matrix is derived from the app's route map and the registry, not
from a hand list: every ``TENANT`` operation is tried with bob's key on alice's VM
over REST, ``/agentic/execute``, MCP and a script, while that VM is stopped and
while it runs; each answer must be ``VM_NOT_FOUND``, never show alice's VM id, and
leave her VM, its guest files and its console as they were.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from keyed import Keyed, assert_error, keyed_server
from quart.testing.connections import WebsocketResponseError

from hypermachine.operations import Access, Operation
from realserver import free_port

VM = {"name": "a-box", "image": "tiny", "memory_mb": 512, "disk_gb": 1}
MCP_HEADERS = {"Accept": "application/json", "MCP-Protocol-Version": "2026-07-28"}
MCP_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}
# A valid value for every required input field an operation may have (and for
# the optional ones a valid call needs); a new required field without one here
# fails the matrix, so no operation can be left out of it.
SAMPLES: dict[str, Any] = {
    "exec_id": "x-1",
    "path": "/etc/hostname",
    "command": ["true"],
    "state": ["running"],
    "code": "40 + 2",
    "text": "bob was here",
    "data": b"bob was here",
    "name": "bobs-snap",  # a snapshot's (or a fork's) name
}


def registry(keyed: Keyed) -> Any:
    return keyed.client.app.extensions["hypermachine.dispatcher"].registry


def tenant_ops(keyed: Keyed) -> list[Operation]:
    return [op for op in registry(keyed) if op.access is Access.TENANT]


def arguments(op: Operation, vm_id: str) -> dict[str, Any]:
    args: dict[str, Any] = {"vm_id": vm_id}
    for name, field in op.input.model_fields.items():
        if name in SAMPLES:
            args[name] = SAMPLES[name]
        elif field.is_required() and name != "vm_id":
            raise AssertionError(f"{op.name}: give the matrix a sample for {name!r}")
    return args


def rest_request(op: Operation, args: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """Method, URL and request options for ``op`` with ``args`` over REST."""
    route = op.http
    assert route is not None
    path = re.sub(r"{(\w+)}", lambda m: str(args[m.group(1)]), route.path)
    query = {q.name: args[q.target] for q in route.query if q.required}
    options: dict[str, Any] = {"query_string": query}
    if route.raw_body:
        options["data"] = args["data"]
    elif route.body is not None and not route.body_optional:
        body_fields = set(route.body.model_fields)
        options["json"] = {k: v for k, v in args.items() if k in body_fields}
    return route.method, path, options


async def test_every_route_is_a_declared_operation(client: Any) -> None:
    """The app's route map and the registry agree, both ways (nothing undeclared)."""
    ops = {op.name: op for op in client.app.extensions["hypermachine.dispatcher"].registry}
    seen = set()
    for rule in client.app.url_map.iter_rules():
        if rule.endpoint == "static":  # Quart's built-in static route; this app has no folder
            continue
        op = ops.get(rule.endpoint)
        assert op is not None and op.http is not None, f"{rule.rule} has no declared operation"
        assert isinstance(op.access, Access), op.name
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        assert path == op.http.path, (op.name, path)
        if not op.http.websocket:
            assert op.http.method in rule.methods, (op.name, rule.methods)
        seen.add(op.name)
    assert seen == {op.name for op in ops.values() if op.http is not None}


async def test_every_rest_route_reaches_every_input_field(client: Any) -> None:
    """Path, query, headers and body together fill the whole input model (no field a
    tool can set but REST cannot, like wait_agent once was)."""
    for op in client.app.extensions["hypermachine.dispatcher"].registry:
        route = op.http
        if route is None or route.websocket or op.name.startswith("mcp_"):
            continue
        reached = {*route.path_params, *(q.target for q in (*route.query, *route.headers))}
        if route.body is not None:
            reached |= set(route.body.model_fields)
        if route.raw_body:
            reached.add("data")
        if op.input.model_config.get("extra") == "allow":  # execute: any call shape
            continue
        assert set(op.input.model_fields) <= reached, (
            op.name,
            set(op.input.model_fields) - reached,
        )


async def test_every_declared_route_part_is_an_input_field(client: Any) -> None:
    """What a route declares (path, query, headers, body fields) the input model takes:
    a documented parameter the operation then refuses (pause's "wait" once was) is a
    contract the server breaks."""
    for op in client.app.extensions["hypermachine.dispatcher"].registry:
        route = op.http
        if route is None or op.name.startswith("mcp_"):
            continue
        if op.input.model_config.get("extra") == "allow":
            continue
        declared = {*route.path_params, *(q.target for q in (*route.query, *route.headers))}
        if route.body is not None:
            declared |= set(route.body.model_fields)
        assert declared <= set(op.input.model_fields), (
            op.name,
            declared - set(op.input.model_fields),
        )


async def test_openapi_parameters_are_what_the_parser_takes(client: Any) -> None:
    doc = await (await client.get("/openapi.json")).get_json()
    for op in client.app.extensions["hypermachine.dispatcher"].registry:
        if op.http is None:
            continue
        described = doc["paths"][op.http.path][op.http.method.lower()]
        params = {(p["in"], p["name"]) for p in described["parameters"]}
        declared = {("path", p) for p in op.http.path_params}
        declared |= {("query", q.name) for q in op.http.query}
        declared |= {("header", q.name) for q in op.http.headers}
        assert params == declared, op.name
    # ...and the parser refuses what the document does not list.
    response = await client.get("/api/v1/vms?colour=blue")
    assert response.status_code == 400
    assert_error(await response.get_json(), "VALIDATION_ERROR")


@pytest.fixture
async def keyed(data_dir: Path, compile_cache: Path, tiny: Path) -> Any:
    # The matrix sends more than a free key's 60 requests a minute.
    async with keyed_server(data_dir, compile_cache, rate_limit_free=0) as k:
        yield k


async def websocket_refusal(client: Any, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    """The status and body a websocket request was refused with (101: it was not)."""
    refused: list[Any] = []
    try:
        async with client.websocket(path, headers=headers) as ws:
            await ws.receive()
    except* WebsocketResponseError as group:
        refused = [e.response for e in group.exceptions if isinstance(e, WebsocketResponseError)]
    if not refused:
        return 101, "upgraded"
    return refused[0].status_code, await refused[0].get_json()


async def rest_attempts(keyed: Keyed, vm_id: str) -> list[tuple[str, int, Any]]:
    answers = []
    for op in tenant_ops(keyed):
        if op.http is None:
            continue
        method, path, options = rest_request(op, arguments(op, vm_id))
        if op.http.websocket:
            status, body = await websocket_refusal(keyed.client, path, keyed.headers(keyed.bob))
        else:
            status, body, _ = await keyed.call(method, path, keyed.bob, **options)
        answers.append((op.name, status, body))
    return answers


async def tool_attempts(keyed: Keyed, vm_id: str) -> list[tuple[str, Any]]:
    answers = []
    for op in registry(keyed).tools():
        if op.access is not Access.TENANT:
            continue
        args = {k: v for k, v in arguments(op, vm_id).items() if not isinstance(v, bytes)}
        _, body, _ = await keyed.call(
            "POST", "/agentic/execute", keyed.bob, json={"name": op.name, "arguments": args}
        )
        answers.append((op.name, body["error"]))
        _, rpc, _ = await keyed.call(
            "POST",
            "/mcp",
            keyed.bob,
            headers={**MCP_HEADERS, "Mcp-Method": "tools/call", "Mcp-Name": op.name},
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": op.name, "arguments": args, "_meta": MCP_META},
            },
        )
        assert "result" in rpc, (op.name, rpc)
        answers.append((f"mcp {op.name}", rpc["result"]["structuredContent"]["error"]))
    return answers


MISSING = "vm-000000000000"


async def assert_all_hidden(keyed: Keyed, vm_id: str) -> None:
    """Every face answers bob for alice's VM exactly as for a VM that does not exist."""
    rest, tools = await rest_attempts(keyed, vm_id), await tool_attempts(keyed, vm_id)
    missing = await rest_attempts(keyed, MISSING)
    for (name, status, body), (_, _, absent) in zip(rest, missing, strict=True):
        assert status == 404, (name, status, body)
        assert_error(body, "VM_NOT_FOUND")
        same = json.dumps(body).replace(vm_id, "X") == json.dumps(absent).replace(MISSING, "X")
        assert same, (name, body, absent)
    for name, error in tools:
        assert error["code"] == "VM_NOT_FOUND", (name, error)


async def test_no_face_reaches_another_tenants_vm(keyed: Keyed) -> None:
    status, vm, _ = await keyed.call("POST", "/api/v1/vms", keyed.alice, json=VM)
    assert status == 201, vm
    vm_id = vm["id"]
    _, stopped, _ = await keyed.call("GET", f"/api/v1/vms/{vm_id}/wait?state=stopped", keyed.alice)
    assert stopped["state"] == "stopped"

    await assert_all_hidden(keyed, vm_id)
    _, still, _ = await keyed.call("GET", f"/api/v1/vms/{vm_id}", keyed.alice)
    assert still["state"] == "stopped"

    status, running, _ = await keyed.call(
        "POST", f"/api/v1/vms/{vm_id}/start", keyed.alice, json={"wait": True}
    )
    assert status == 200 and running["state"] == "running", running
    marker = {"path": "/tmp/alice", "text": "alice's secret"}
    status, written, _ = await keyed.call(
        "POST",
        "/agentic/execute",
        keyed.alice,
        json={
            "name": "write_vm_file",
            "arguments": {"vm_id": vm_id, "wait_agent_s": 120, **marker},
        },
    )
    assert status == 200 and not written["is_error"], written
    log_before = keyed.services.manager.console.log(vm_id, 10_000)

    await assert_all_hidden(keyed, vm_id)

    _, after, _ = await keyed.call("GET", f"/api/v1/vms/{vm_id}", keyed.alice)
    assert after["state"] == "running" and after["started_at"] == running["started_at"]
    status, content, _ = await keyed.call(
        "GET", f"/api/v1/vms/{vm_id}/files", keyed.alice, query_string={"path": "/tmp/alice"}
    )
    assert status == 200 and content == b"alice's secret"
    status, hostname, _ = await keyed.call(
        "GET", f"/api/v1/vms/{vm_id}/files", keyed.alice, query_string={"path": "/etc/hostname"}
    )
    assert b"bob" not in hostname
    log_after = keyed.services.manager.console.log(vm_id, 10_000)
    assert "bob was here" not in "\n".join(log_after[len(log_before) - 1 :])

    # The audit log shows alice's work and every one of bob's denied tries.
    _, audit, _ = await keyed.call("GET", "/api/v1/audit?limit=500", keyed.admin)
    keys = {k.name: k.id for k in keyed.services.security.store.list_keys()}
    bobs = {(e["operation"], e["outcome"]) for e in audit["entries"] if e["key_id"] == keys["bob"]}
    for op in tenant_ops(keyed):
        if op.http is not None or op.tool:
            assert (op.name, "VM_NOT_FOUND") in bobs, op.name
    alices = [e for e in audit["entries"] if e["key_id"] == keys["alice"]]
    assert any(e["operation"] == "write_vm_file" and e["details"]["path"] == "/tmp/alice"
               for e in alices)  # fmt: skip


async def test_a_tenant_sees_in_use_not_who(keyed: Keyed) -> None:
    """Error details and inventories never carry another tenant's VM id."""
    forward = {"type": "nat", "ports": [{"host": free_port(), "guest": 80}]}
    status, vm, _ = await keyed.call(
        "POST", "/api/v1/vms", keyed.alice, json={**VM, "network": forward}
    )
    assert status == 201, vm
    clash = {**VM, "name": "b-box", "network": forward}
    status, body, _ = await keyed.call("POST", "/api/v1/vms", keyed.bob, json=clash)
    assert status == 409, body
    assert vm["id"] not in json.dumps(body), body
    status, body, _ = await keyed.call("POST", "/api/v1/vms", keyed.admin, json=clash)
    assert status == 409 and vm["id"] in json.dumps(body), body


async def test_audit_records_exec_console_and_script(keyed: Keyed) -> None:
    status, vm, _ = await keyed.call(
        "POST", "/api/v1/vms", keyed.alice, json={**VM, "start": True, "wait": True}
    )
    assert status == 201 and vm["state"] == "running", vm
    vm_id = vm["id"]
    status, ran, _ = await keyed.call(
        "POST",
        f"/api/v1/vms/{vm_id}/exec",
        keyed.alice,
        query_string={"wait_agent": "120"},
        json={"command": ["echo", "hi"], "stdin": "not for the log", "env": {"TOKEN": "s3cret"}},
    )
    assert status == 200 and ran["exit_code"] == 0, ran
    async with keyed.client.websocket(
        f"/api/v1/vms/{vm_id}/console", headers=keyed.headers(keyed.alice)
    ) as ws:
        await ws.send(b"\n")
        await ws.receive()
    code = 'vm.exec("true").exit_code'
    status, _, _ = await keyed.call(
        "POST", f"/api/v1/vms/{vm_id}/script", keyed.alice, json={"code": code}
    )
    assert status == 200
    _, audit, _ = await keyed.call("GET", "/api/v1/audit?limit=500", keyed.admin)
    entries = {e["operation"]: e for e in audit["entries"] if e["target"] == vm_id}
    assert entries["exec_in_vm"]["details"]["command"] in (
        ["echo", "hi"],
        ["/bin/sh", "-c", "true"],
    )
    text = json.dumps(audit)
    assert "not for the log" not in text and "s3cret" not in text
    assert entries["open_vm_console"]["outcome"] == "ok"
    assert entries["close_vm_console"]["outcome"] == "ok"
    script = entries["run_vm_script"]["details"]
    assert script["size"] == len(code) and len(script["sha256"]) == 64


async def test_console_refuses_a_foreign_origin(keyed: Keyed) -> None:
    _, vm, _ = await keyed.call("POST", "/api/v1/vms", keyed.alice, json=VM)
    headers = {**keyed.headers(keyed.alice), "Origin": "http://attacker.example"}
    status, body = await websocket_refusal(keyed.client, f"/api/v1/vms/{vm['id']}/console", headers)
    assert status == 403
    assert_error(body, "FORBIDDEN")
