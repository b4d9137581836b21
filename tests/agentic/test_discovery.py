"""OpenAPI, ontology, docs page, plugin manifest and the raw MCP endpoint, through the app.

These run the real ``open_services()`` around ``app.test_client()``; no guest boots.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import validate
from pyld import jsonld

from hypermachine.api import build_registry

HYDRA = "http://www.w3.org/ns/hydra/core#"
RDFS = "http://www.w3.org/2000/01/rdf-schema#"


async def get_json(client: Any, path: str, **kw: Any) -> Any:
    response = await client.get(path, **kw)
    assert response.status_code == 200, (path, await response.get_data())
    return await response.get_json(force=True)


async def test_openapi_is_valid_and_covers_every_route(client: Any) -> None:
    doc = await get_json(client, "/openapi.json")
    validate(doc)  # raises on an invalid OpenAPI 3.1 document
    assert doc["openapi"].startswith("3.1")
    for rule in client.app.url_map.iter_rules():
        if rule.endpoint == "static":  # Quart's built-in static route; this app has no folder
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        assert path in doc["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path], (method, path)
    for op in build_registry():
        if op.http is None:  # tool-only: its REST counterpart has another shape
            assert op.name in (
                "read_vm_file",
                "write_vm_file",
                "query_vm_qmp",
                "create_vm_from_snapshot",
            )
            continue
        operation = doc["paths"][op.http.path][op.http.method.lower()]
        assert operation["operationId"] == op.name
        for err in op.all_errors:
            assert str(err.status) in operation["responses"], (op.name, err.code)
    create = doc["paths"]["/api/v1/vms"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateVmRequest"
    }
    assert "ErrorBody" in doc["components"]["schemas"]
    assert doc["servers"] == [{"url": "http://localhost"}]


async def test_ontology_expands_offline_without_dropping_terms(client: Any) -> None:
    doc = await get_json(client, "/agentic/ontology")
    fetched: list[str] = []
    dropped: list[str] = []

    def no_network(url: str, options: Any) -> Any:
        fetched.append(url)
        raise RuntimeError(f"the ontology must not need {url}")

    expanded = jsonld.expand(
        doc, {"documentLoader": no_network}, on_property_dropped=dropped.append
    )
    assert fetched == [] and dropped == []
    flat = jsonld.flatten(doc, None, {"documentLoader": no_network})
    nodes = {node["@id"]: node for node in flat}
    base = "http://localhost/agentic/ontology#"
    for name in ("VirtualMachine", "Image", "Script", "Metrics", "VmState"):
        assert f"{HYDRA}Class" in nodes[base + name]["@type"], name
    cpus = nodes[base + "VirtualMachine/cpus"]
    assert cpus[RDFS + "range"] == [{"@id": "http://www.w3.org/2001/XMLSchema#integer"}]
    state = nodes[base + "VirtualMachine/state"]
    assert state[RDFS + "range"] == [{"@id": base + "VmState"}]
    assert base + "VmState/running" in nodes
    start = nodes[base + "operation/start_vm"]
    assert start[HYDRA + "method"] == [{"@value": "POST"}]
    assert start[base + "path"] == [{"@value": "/api/v1/vms/{vm_id}/start"}]
    assert start[HYDRA + "expects"] == [{"@id": base + "StartVmInput"}]
    assert expanded[0]["@type"] == [HYDRA + "ApiDocumentation"]
    operations = [n for n in flat if base + "toolName" in n]
    assert sorted(o[base + "toolName"][0]["@value"] for o in operations) == sorted(
        op.name for op in build_registry().tools()
    )


async def test_docs_page_uses_local_assets(client: Any) -> None:
    page = await client.get("/docs")
    html = (await page.get_data()).decode()
    assert page.status_code == 200 and "SwaggerUIBundle" in html
    assets = re.findall(r'(?:src|href)="(/docs/static/[^"]+)"', html)
    assert assets and not re.search(r"https?://", html)
    for asset in assets:
        response = await client.get(asset)
        assert response.status_code == 200, asset
        assert len(await response.get_data()) > 100
    missing = await client.get("/docs/static/..%2Fsecret")
    assert missing.status_code == 404


@pytest.mark.hm_settings(allowed_origins=("http://vmhost.example:8080",))  # open mode: named host
async def test_plugin_manifest_points_at_the_requests_host(client: Any) -> None:
    manifest = await get_json(
        client, "/.well-known/ai-plugin.json", headers={"Host": "vmhost.example:8080"}
    )
    assert manifest["schema_version"] == "v1"
    assert manifest["auth"] == {"type": "none"}
    assert manifest["api"] == {
        "type": "openapi",
        "url": "http://vmhost.example:8080/openapi.json",
        "is_user_authenticated": False,
    }
    assert len(manifest["name_for_human"]) <= 20
    assert re.fullmatch(r"[A-Za-z0-9_]{1,50}", manifest["name_for_model"])
    assert len(manifest["description_for_human"]) <= 100


async def test_unknown_tool_format_is_a_clean_404(client: Any) -> None:
    response = await client.get("/agentic/tools/cohere")
    body = await response.get_json()
    assert response.status_code == 404
    assert body["error"]["code"] == "NOT_FOUND"
    assert body["error"]["details"]["known"] == ["anthropic", "gemini", "mcp", "openai"]


# -- the raw MCP endpoint (the SDK-driven tests are in test_mcp_sdk.py) -------------

INIT: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream"}
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


async def mcp(client: Any, body: Any, **headers: str) -> tuple[int, Any, Any]:
    response = await client.post("/mcp", json=body, headers={**ACCEPT, **headers})
    data = await response.get_data()
    return response.status_code, (await response.get_json()) if data else None, response.headers


async def test_mcp_handshake_session_lifecycle(client: Any) -> None:
    status, body, headers = await mcp(client, INIT)
    assert status == 200 and body["result"]["protocolVersion"] == "2025-03-26"
    session = headers["Mcp-Session-Id"]
    status, _, _ = await mcp(
        client,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        **{"Mcp-Session-Id": session},
    )
    assert status == 202
    status, body, _ = await mcp(
        client, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, **{"Mcp-Session-Id": session}
    )
    assert status == 200 and len(body["result"]["tools"]) == len(build_registry().tools())
    status, body, _ = await mcp(client, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
    assert status == 400 and body["error"]["code"] == -32600  # no session
    status, body, _ = await mcp(
        client, {"jsonrpc": "2.0", "id": 4, "method": "nope"}, **{"Mcp-Session-Id": session}
    )
    assert body["error"]["code"] == -32601
    deleted = await client.delete("/mcp", headers={"Mcp-Session-Id": session})
    assert deleted.status_code == 204
    status, body, _ = await mcp(
        client, {"jsonrpc": "2.0", "id": 5, "method": "ping"}, **{"Mcp-Session-Id": session}
    )
    assert status == 404


async def test_mcp_unknown_version_falls_back_to_latest_handshake(client: Any) -> None:
    status, body, _ = await mcp(
        client, {**INIT, "params": {**INIT["params"], "protocolVersion": "1999-01-01"}}
    )
    assert status == 200 and body["result"]["protocolVersion"] == "2025-11-25"


async def test_mcp_stateless_checks(client: Any) -> None:
    ping = {"jsonrpc": "2.0", "id": 7, "method": "ping", "params": {"_meta": MODERN_META}}
    good = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "ping"}
    status, body, _ = await mcp(client, ping, **good)
    assert status == 200 and body["result"] == {"resultType": "complete"}
    status, body, _ = await mcp(client, ping, **{**good, "Mcp-Method": "tools/list"})
    assert status == 400 and body["error"]["code"] == -32020
    future = {**MODERN_META, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}
    status, body, _ = await mcp(
        client,
        {**ping, "params": {"_meta": future}},
        **{**good, "MCP-Protocol-Version": "2099-01-01"},
    )
    assert status == 400 and body["error"]["code"] == -32022
    assert "2026-07-28" in body["error"]["data"]["supported"]
    params = {"name": "get_vm", "arguments": {"vm_id": "vm-none"}, "_meta": MODERN_META}
    call = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": params}
    headers = {**good, "Mcp-Method": "tools/call", "Mcp-Name": "list_vms"}
    status, body, _ = await mcp(client, call, **headers)
    assert status == 400 and body["error"]["code"] == -32020  # Mcp-Name disagrees with the body
    status, body, _ = await mcp(client, call, **{**headers, "Mcp-Name": "get_vm"})
    assert status == 200 and body["result"]["isError"] is True
    assert body["result"]["structuredContent"]["error"]["code"] == "VM_NOT_FOUND"


async def test_mcp_refuses_foreign_origins_and_bad_envelopes(client: Any) -> None:
    status, body, _ = await mcp(client, INIT, Origin="http://evil.example")
    assert status == 403 and body["error"]["code"] == -32600
    status, _, _ = await mcp(client, INIT, Origin="http://localhost:3000")
    assert status == 200
    status, body, _ = await mcp(client, [INIT])
    assert status == 400 and body["error"]["code"] == -32600
    status, body, _ = await mcp(client, {"id": 1, "method": "ping"})
    assert status == 400
    raw = await client.post(
        "/mcp", data=b"{nope", headers={**ACCEPT, "Content-Type": "application/json"}
    )
    assert raw.status_code == 400 and (await raw.get_json())["error"]["code"] == -32700
    get = await client.get("/mcp", headers=ACCEPT)
    assert get.status_code == 405
