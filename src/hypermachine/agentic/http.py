"""The agent-facing routes: tool lists, execute, ontology, OpenAPI, docs, manifest, MCP.

Every answer is generated from the operation registry; handlers only pick the
face and serialize it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio
from pydantic import RootModel
from quart import Blueprint, Response, current_app, jsonify, request
from quart_trio import QuartTrio

from ..api.requests import parse_body
from ..errors import NotFound
from . import faces
from .auth import auth_mode, plugin_auth
from .execute import parse_call, render, run_call
from .mcp import McpCore
from .mcp_http import LocalBackend, McpHttp
from .ontology import build_ontology
from .openapi import build_openapi
from .operations import build_registry
from .registry import Registry

__all__ = ["Agentic", "register_agentic"]

blueprint = Blueprint("agentic", __name__)

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


@dataclass(frozen=True)
class Agentic:
    """What the routes need: the registry, the services and the MCP endpoint."""

    registry: Registry
    services: Any
    mcp: McpHttp


def register_agentic(app: QuartTrio) -> None:
    """Build the registry around the app's services and mount the routes."""
    services = app.extensions["hypermachine"]
    registry = build_registry()
    mcp = McpHttp(McpCore(LocalBackend(registry, services)))
    app.extensions["hypermachine.agentic"] = Agentic(registry, services, mcp)
    app.register_blueprint(blueprint)


def _agentic() -> Agentic:
    found: Agentic = current_app.extensions["hypermachine.agentic"]
    return found


def _base_url() -> str:
    return request.host_url.rstrip("/")


class _JsonObject(RootModel[dict[str, Any]]):
    """Any JSON object (the call shapes are told apart by :func:`parse_call`)."""


@blueprint.get("/agentic/tools/<provider>")
async def tools(provider: str) -> Response:
    face = _FACES.get(provider)
    if face is None:
        raise NotFound(f"no tool format {provider!r}", known=sorted(_FACES))
    return jsonify(face(_agentic().registry))


@blueprint.post("/agentic/execute")
async def execute() -> Response:
    body = await parse_body(_JsonObject)
    call = parse_call(body.root)
    agentic = _agentic()
    outcome = await run_call(agentic.registry, agentic.services, call)
    return jsonify(render(call, outcome))


@blueprint.get("/agentic/ontology")
async def ontology() -> Response:
    response = jsonify(build_ontology(_agentic().registry, _base_url()))
    response.content_type = "application/ld+json"
    return response


@blueprint.get("/openapi.json")
async def openapi() -> Response:
    agentic = _agentic()
    keyed = auth_mode(agentic.services) == "api_key"
    return jsonify(build_openapi(agentic.registry, _base_url(), keyed=keyed))


@blueprint.get("/docs")
async def docs() -> Response:
    return Response(_DOCS_PAGE, content_type="text/html; charset=utf-8")


@blueprint.get("/docs/static/<filename>")
async def docs_asset(filename: str) -> Response:
    """The Swagger UI files, from the locally installed ``swagger-ui-bundle-v2``."""
    from swagger_ui_bundle import swagger_ui_path

    content_type = _DOC_ASSETS.get(filename)
    if content_type is None:
        raise NotFound(f"no documentation asset {filename!r}")
    # Quart's send_file streams through aiofiles (asyncio), which Trio cannot drive.
    data = await trio.to_thread.run_sync((swagger_ui_path / filename).read_bytes)
    response = Response(data, content_type=content_type)
    response.cache_control.max_age = 3600
    return response


@blueprint.get("/.well-known/ai-plugin.json")
async def ai_plugin() -> Response:
    base = _base_url()
    mode = auth_mode(_agentic().services)
    return jsonify(
        {
            "schema_version": "v1",
            "name_for_human": "HyperMachine",
            "name_for_model": "hypermachine",
            "description_for_human": "Create, start, stop and inspect QEMU virtual machines.",
            "description_for_model": (
                "Manage virtual machines on one Linux host: list images, create VMs from "
                "them, start, stop, pause, resume, reboot, delete, wait for a state, read "
                "metrics, run sandboxed Rhai scripts. Errors are {error: {code, message, "
                "details}}. The same tools are at /agentic/tools/{openai,anthropic,gemini} "
                "and over MCP at /mcp."
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
    )


@blueprint.post("/mcp")
async def mcp_post() -> Response:
    return await _agentic().mcp.post()


@blueprint.get("/mcp")
async def mcp_get() -> Response:
    return _agentic().mcp.get()


@blueprint.delete("/mcp")
async def mcp_delete() -> Response:
    return _agentic().mcp.delete()
