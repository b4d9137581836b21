"""The agent-facing operations: tool lists, execute, ontology, OpenAPI, docs, MCP.

Every document is generated from the operation registry; the handlers only pick
the face. MCP's transport reads the raw request, so its three routes have custom
views — their access is still the declared one, checked by the dispatcher first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import trio
from quart import Response

from ..errors import NotFound
from ..operations.declare import Access, Context, Document, HttpRoute, Operation
from ..operations.dispatch import Dispatcher
from ..operations.inputs import AssetInput, NoInput, ProviderInput, ToolCallInput
from ..security.caller import current_caller
from . import faces
from .auth import auth_mode, plugin_auth
from .execute import parse_call, render, run_call
from .mcp import McpCore
from .mcp_http import LocalBackend, McpHttp
from .ontology import build_ontology
from .openapi import build_openapi

__all__ = ["agent_operations", "mcp_views"]

_FACES = {
    "openai": faces.openai_tools,
    "anthropic": faces.anthropic_tools,
    "gemini": faces.gemini_tools,
    "mcp": faces.mcp_tools,
}
_DOC_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
_DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>HyperMachine API</title>
<link rel="icon" href="/docs/static/favicon-32x32.png">
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


async def _tools(ctx: Context, args: ProviderInput) -> dict[str, Any]:
    face = _FACES.get(args.provider)
    if face is None:
        raise NotFound(f"no tool format {args.provider!r}", known=sorted(_FACES))
    return face(ctx.registry)


async def _execute(ctx: Context, args: ToolCallInput) -> dict[str, Any]:
    call = parse_call(args.model_extra or {})
    outcome = await run_call(ctx.registry, ctx.dispatch, call)
    return render(call, outcome)


async def _ontology(ctx: Context, _args: NoInput) -> Document:
    doc = build_ontology(ctx.registry, ctx.base_url)
    return Document(json.dumps(doc), "application/ld+json")


async def _openapi(ctx: Context, _args: NoInput) -> dict[str, Any]:
    keyed = auth_mode(ctx.services) == "api_key"
    return build_openapi(ctx.registry, ctx.base_url, keyed=keyed)


async def _docs(_ctx: Context, _args: NoInput) -> Document:
    return Document(_DOCS_PAGE, "text/html; charset=utf-8")


async def _docs_asset(_ctx: Context, args: AssetInput) -> Document:
    """The Swagger UI files, from the locally installed ``swagger-ui-bundle-v2``."""
    from swagger_ui_bundle import swagger_ui_path

    content_type = _DOC_ASSETS.get(args.filename)
    if content_type is None:
        raise NotFound(f"no documentation asset {args.filename!r}")
    # Quart's send_file streams through aiofiles (asyncio), which Trio cannot drive.
    data = await trio.to_thread.run_sync((swagger_ui_path / args.filename).read_bytes)
    return Document(data, content_type, max_age=3600)


async def _ai_plugin(ctx: Context, _args: NoInput) -> dict[str, Any]:
    base = ctx.base_url
    mode = auth_mode(ctx.services)
    return {
        "schema_version": "v1",
        "name_for_human": "HyperMachine",
        "name_for_model": "hypermachine",
        "description_for_human": "Create, start, stop and inspect QEMU virtual machines.",
        "description_for_model": (
            "Manage virtual machines on one Linux host: list images, create VMs from "
            "them, start, stop, pause, resume, reboot, delete, wait for a state, read "
            "metrics, run commands and sandboxed Rhai scripts. Errors are {error: {code, "
            "message, details}}. The same tools are at /agentic/tools/{openai,anthropic,"
            "gemini} and over MCP at /mcp."
        ),
        "auth": plugin_auth(mode),
        "api": {
            "type": "openapi",
            "url": f"{base}/openapi.json",
            "is_user_authenticated": mode != "none",
        },
        "logo_url": f"{base}/docs/static/favicon-32x32.png",
        "contact_email": "root@localhost",
        "legal_info_url": f"{base}/docs",
    }


async def _mcp_allowed(_ctx: Context, _args: NoInput) -> None:
    """Nothing to do: the MCP views run once the dispatcher has checked access."""


def _public(name: str, title: str, path: str, handler: Any, **kw: Any) -> Operation:
    kw.setdefault("input", NoInput)
    return Operation(
        name=name,
        title=title,
        summary=title + ".",
        returns=kw.pop("returns", "The document."),
        handler=handler,
        access=Access.PUBLIC,
        tool=False,
        tag=kw.pop("tag", "agentic"),
        http=HttpRoute("GET", path, content=kw.pop("content", "application/json")),
        **kw,
    )


def _mcp(method: str, status: int, summary: str) -> Operation:
    return Operation(
        name=f"mcp_{method.lower()}",
        title=f"MCP ({method})",
        summary=summary,
        returns="A JSON-RPC 2.0 answer.",
        input=NoInput,
        handler=_mcp_allowed,
        access=Access.KEY,
        tool=False,
        tag="mcp",
        http=HttpRoute(method, "/mcp", status=status),
    )


def agent_operations() -> list[Operation]:
    """The discovery documents (public), the tool runner and MCP (a key)."""
    return [
        _public(
            "get_tool_definitions",
            "Tool definitions in one provider's format",
            "/agentic/tools/{provider}",
            _tools,
            input=ProviderInput,
            errors=(NotFound,),
        ),
        Operation(
            name="execute_tool",
            title="Run one tool call",
            summary=(
                "Run one tool call: {name, arguments}, an OpenAI tool_call, an Anthropic "
                "tool_use block or a Gemini functionCall part; answered in the matching shape."
            ),
            returns="The tool's answer in the call's own shape (errors included).",
            input=ToolCallInput,
            handler=_execute,
            access=Access.KEY,
            tool=False,
            tag="agentic",
            http=HttpRoute("POST", "/agentic/execute", body=ToolCallInput),
        ),
        _public(
            "get_ontology",
            "The JSON-LD ontology (schema.org + Hydra)",
            "/agentic/ontology",
            _ontology,
            content="application/ld+json",
        ),
        _public("get_openapi", "This OpenAPI document", "/openapi.json", _openapi, tag="meta"),
        _public(
            "get_docs_page",
            "Interactive API documentation",
            "/docs",
            _docs,
            content="text/html",
            tag="meta",
        ),
        _public(
            "get_docs_asset",
            "A static file of the documentation page",
            "/docs/static/{filename}",
            _docs_asset,
            input=AssetInput,
            errors=(NotFound,),
            content="application/octet-stream",
            tag="meta",
        ),
        _public(
            "get_ai_plugin_manifest",
            "The AI plugin manifest",
            "/.well-known/ai-plugin.json",
            _ai_plugin,
        ),
        _mcp("POST", 200, "MCP over Streamable HTTP: one JSON-RPC message."),
        _mcp("GET", 405, "MCP server-to-client stream: not offered (405)."),
        _mcp("DELETE", 204, "End an MCP session (Mcp-Session-Id header)."),
    ]


def mcp_views(dispatcher: Dispatcher) -> Mapping[str, Any]:
    """The custom views of the three MCP routes (the transport reads the raw request)."""
    settings = dispatcher.services.settings
    mcp = McpHttp(McpCore(LocalBackend(dispatcher)), settings.allowed_origins)

    async def granted(name: str) -> None:
        await dispatcher.call(name, current_caller(), {})

    async def post() -> Response:
        await granted("mcp_post")
        return await mcp.post()

    async def get() -> Response:
        await granted("mcp_get")
        return mcp.get()

    async def delete() -> Response:
        await granted("mcp_delete")
        return mcp.delete()

    return {"mcp_post": post, "mcp_get": get, "mcp_delete": delete}
