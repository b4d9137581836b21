"""MCP driven by the official ``mcp`` SDK against a real ``hypermachine serve`` process.

Over Streamable HTTP in both protocol eras the SDK speaks (the ``initialize`` +
``Mcp-Session-Id`` handshake, and the stateless 2026-07-28 revision its ``auto``
mode discovers), and over stdio through ``hypermachine mcp``. Each transport
creates and starts a real tiny VM through tool calls and reads its state back.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from realserver import Server, free_port
from support import qemu_pids_for

pytestmark = pytest.mark.qemu

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def server(data_dir: Path, tiny: Path) -> Iterator[Server]:
    srv = Server(data_dir, free_port())
    srv.start()
    uuids: set[str] = set()
    try:
        yield srv
    finally:
        try:
            with httpx.Client(base_url=srv.url, timeout=90) as client:
                for vm in client.get("/api/v1/vms").json()["vms"]:
                    uuids.add(vm["uuid"])
                    client.delete(f"/api/v1/vms/{vm['id']}?force=true")
        finally:
            srv.stop()
    assert qemu_pids_for(uuids) == [], "a QEMU process outlived its test"


def structured(result: Any) -> dict[str, Any]:
    """The tool result as data, checking the text content says the same."""
    text = json.loads(result.content[0].text)
    assert result.structured_content == text
    return dict(text)


async def create_start_read(client: Client, name: str) -> None:
    """The scenario every transport must carry: list, create+start, read back, fail."""
    tools = await client.list_tools()
    names = {tool.name for tool in tools.tools}
    assert {"create_vm", "start_vm", "get_vm", "wait_for_vm", "list_images"} <= names
    create = next(tool for tool in tools.tools if tool.name == "create_vm")
    assert create.input_schema["type"] == "object"
    assert create.annotations is not None and create.annotations.destructive_hint is False

    created = await client.call_tool(
        "create_vm", {"name": name, "image": "tiny", "memory_mb": 512, "disk_gb": 1, "wait": True}
    )
    assert not created.is_error, created
    vm = structured(created)
    assert vm["state"] == "stopped"

    started = await client.call_tool("start_vm", {"vm_id": vm["id"], "wait": True})
    assert not started.is_error, started
    assert structured(started)["state"] == "running"

    got = structured(await client.call_tool("get_vm", {"vm_id": vm["id"]}))
    assert (got["id"], got["state"], got["name"]) == (vm["id"], "running", name)
    assert got["pid"] and got["accelerator"] in ("kvm", "tcg")

    # A tool's own failure reaches the model as a result, not as a protocol error.
    again = await client.call_tool("start_vm", {"vm_id": vm["id"]})
    assert again.is_error
    assert structured(again)["error"]["code"] == "INVALID_STATE"

    # An unknown tool is a protocol error.
    with pytest.raises(MCPError) as caught:
        await client.call_tool("format_host_disk", {})
    assert caught.value.error.code == -32602


async def test_streamable_http_both_eras(server: Server) -> None:
    async with Client(f"{server.url}/mcp", mode="legacy") as legacy:
        assert legacy.protocol_version == "2025-11-25"
        assert (await legacy.session.send_ping()) is not None
        await create_start_read(legacy, "mcp-http-legacy")

    async with Client(f"{server.url}/mcp", mode="auto") as modern:
        assert modern.protocol_version == "2026-07-28"
        listed = await modern.call_tool("list_vms", {"state": ["running"]})
        vms = structured(listed)["vms"]
        assert [vm["name"] for vm in vms] == ["mcp-http-legacy"]
        bad = await modern.call_tool("create_vm", {"name": "x,file=/etc/passwd", "image": "tiny"})
        assert bad.is_error
        assert structured(bad)["error"]["code"] == "VALIDATION_ERROR"


async def test_stdio_forwarding(server: Server) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "hypermachine.cli", "mcp", "--server", server.url, "--api-key", "unused"],
        env={"PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])},
    )
    async with Client(params, mode="legacy") as client:
        await create_start_read(client, "mcp-stdio")
    async with Client(params, mode="auto") as client:
        assert client.protocol_version == "2026-07-28"
        got = structured(await client.call_tool("list_vms", {"name": "mcp-stdio"}))
        assert [vm["state"] for vm in got["vms"]] == ["running"]
