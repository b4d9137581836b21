"""The OpenAPI 3.1 document for every route, generated (pure).

REST operations come from the registry (their route, body and query, result
model and errors); the few routes that are not operations (health, the agentic
faces, the docs, MCP) are described in :data:`_OTHER_ROUTES`. Schemas are the
pydantic models' own JSON Schemas under ``components/schemas``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..errors import (
    ConsoleBusy,
    ExecNotFound,
    Forbidden,
    GuestAgentUnavailable,
    GuestFileTooLarge,
    GuestOperationFailed,
    GuestPathNotFound,
    HMError,
    InvalidState,
    KeyNotFound,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    VmNotFound,
    all_error_classes,
)
from ..models import ExecResult, FileWritten, ImageInfo
from ..security.models import AuditPage, CreatedKey, CreateKeyRequest, KeyList
from ..security.service import is_admin_path, is_public_path
from .registry import HttpRoute, Operation, QueryParam, Registry
from .schemas import json_schema

__all__ = ["ErrorBody", "build_openapi"]

_REF = "#/components/schemas/{model}"


class ErrorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(description="Stable machine-readable code, e.g. VM_NOT_FOUND.")
    message: str = Field(description="What went wrong, for people.")
    details: dict[str, Any] = Field(description="Structured facts, e.g. current and allowed.")


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {code, message, details}}``."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorInfo


class Health(BaseModel):
    """``GET /health``."""

    status: str
    version: str
    uptime_seconds: float
    accelerator: str
    accelerator_reason: str
    qemu_version: str
    live_vms: int
    auth: str = Field(description='"open" (no key needed) or "keys".')
    qemu_user: str | None = Field(description="The user QEMU runs as (null: the server's).")


class ImageList(BaseModel):
    images: list[ImageInfo]


class ToolList(BaseModel):
    """A provider's tool definitions, ready to pass to its SDK."""

    tools: list[dict[str, Any]]


@dataclass(frozen=True)
class _Route:
    """A non-registry route, described by hand (it has no input model to generate from)."""

    operation_id: str
    tag: str
    summary: str
    http: HttpRoute
    content_type: str = "application/json"
    response: type[BaseModel] | None = None
    request_schema: dict[str, Any] | None = None
    path_schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: tuple[type[HMError], ...] = ()


_JSONRPC = {"type": "object", "description": "A JSON-RPC 2.0 message (MCP)."}
_VM_ID = {"vm_id": {"type": "string"}}
_GUEST_PATH = QueryParam("path", {"type": "string"}, "Absolute path in the guest.", required=True)
_WAIT_AGENT = QueryParam("wait_agent", {"type": "number"}, "Wait this long for the guest agent.")


_FILE_ERRORS: tuple[type[HMError], ...] = (
    VmNotFound, InvalidState, GuestAgentUnavailable, GuestPathNotFound, GuestFileTooLarge,
    GuestOperationFailed,
)  # fmt: skip


def _guest_routes() -> tuple[_Route, ...]:
    """Routes of guest access and observation that stream or carry raw bytes."""
    vm = "/api/v1/vms/{vm_id}"
    exec_ids = {**_VM_ID, "exec_id": {"type": "string"}}
    return (
        _Route("list_execs", "guest", "Commands run in this VM since the server started.",
               HttpRoute("GET", f"{vm}/exec"), path_schemas=_VM_ID, errors=(VmNotFound,)),
        _Route("get_exec", "guest", "One command's status and output so far.",
               HttpRoute("GET", f"{vm}/exec/{{exec_id}}"), response=ExecResult,
               path_schemas=exec_ids, errors=(VmNotFound, ExecNotFound)),
        _Route("stream_exec", "guest", "A command's output as server-sent events.",
               HttpRoute("GET", f"{vm}/exec/{{exec_id}}/stream"),
               content_type="text/event-stream", path_schemas=exec_ids,
               errors=(VmNotFound, ExecNotFound)),
        _Route("download_file", "guest", "A guest file's raw bytes.",
               HttpRoute("GET", f"{vm}/files", query=(_GUEST_PATH, _WAIT_AGENT)),
               content_type="application/octet-stream", path_schemas=_VM_ID,
               errors=_FILE_ERRORS),
        _Route("upload_file", "guest", "Create or replace a guest file from the raw body.",
               HttpRoute("PUT", f"{vm}/files", query=(_GUEST_PATH, _WAIT_AGENT)),
               response=FileWritten, path_schemas=_VM_ID, errors=_FILE_ERRORS,
               request_schema={"type": "string", "contentMediaType": "application/octet-stream"}),
        _Route("console_log", "guest", "The captured serial console (the last N lines).",
               HttpRoute("GET", f"{vm}/console/log", query=(
                   QueryParam("tail", {"type": "integer", "minimum": 1}, "Only the last N lines."),
               )), content_type="text/plain", path_schemas=_VM_ID, errors=(VmNotFound,)),
        _Route("console", "guest", "Interactive serial console (websocket upgrade).",
               HttpRoute("GET", f"{vm}/console", status=101), path_schemas=_VM_ID,
               errors=(VmNotFound, InvalidState, ConsoleBusy)),
        _Route("events", "events", "Every VM change as server-sent events; Last-Event-ID resumes.",
               HttpRoute("GET", "/api/v1/events", query=(
                   QueryParam("vm_id", {"type": "string"}, "Only this VM's events."),
                   QueryParam("after", {"type": "integer"}, "Replay from after this id."),
               )), content_type="text/event-stream"),
        _Route("metrics", "meta", "Prometheus exposition of VMs, API and QMP figures.",
               HttpRoute("GET", "/metrics"), content_type="text/plain"),
    )  # fmt: skip


def _ref_of(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


_OTHER_ROUTES: tuple[_Route, ...] = (
    _Route("health", "meta", "Server status, version, uptime, accelerator.",
           HttpRoute("GET", "/health"), response=Health),
    _Route("get_tools", "agentic", "Tool definitions in one provider's format.",
           HttpRoute("GET", "/agentic/tools/{provider}"), response=ToolList,
           path_schemas={"provider": {"enum": ["openai", "anthropic", "gemini", "mcp"]}},
           errors=(NotFound,)),
    _Route("execute_tool", "agentic",
           "Run one tool call: {name, arguments}, an OpenAI tool_call, an Anthropic tool_use "
           "block or a Gemini functionCall part; answered in the matching shape.",
           HttpRoute("POST", "/agentic/execute", body=None),
           request_schema={"type": "object"}),
    _Route("get_ontology", "agentic", "The JSON-LD ontology (schema.org + Hydra).",
           HttpRoute("GET", "/agentic/ontology"), content_type="application/ld+json"),
    _Route("get_openapi", "meta", "This document.", HttpRoute("GET", "/openapi.json")),
    _Route("docs_page", "meta", "Interactive API documentation.", HttpRoute("GET", "/docs"),
           content_type="text/html"),
    _Route("docs_asset", "meta", "A static file of the documentation page.",
           HttpRoute("GET", "/docs/static/{filename}"), content_type="application/octet-stream",
           path_schemas={"filename": {"type": "string"}}, errors=(NotFound,)),
    _Route("ai_plugin_manifest", "agentic", "The AI plugin manifest.",
           HttpRoute("GET", "/.well-known/ai-plugin.json")),
    _Route("mcp_post", "mcp", "MCP over Streamable HTTP: one JSON-RPC message.",
           HttpRoute("POST", "/mcp"), request_schema=_JSONRPC),
    _Route("mcp_get", "mcp", "MCP server-to-client stream: not offered (405).",
           HttpRoute("GET", "/mcp", status=405)),
    _Route("mcp_delete", "mcp", "End an MCP session (Mcp-Session-Id header).",
           HttpRoute("DELETE", "/mcp", status=204)),
    *_guest_routes(),
    # Admin only (hypermachine.security): API keys and the audit log.
    _Route("list_keys", "admin", "Every API key (never the keys themselves).",
           HttpRoute("GET", "/api/v1/keys"), response=KeyList),
    _Route("create_key", "admin", "Create an API key; the answer shows it this once.",
           HttpRoute("POST", "/api/v1/keys", status=201), response=CreatedKey,
           request_schema=_ref_of(CreateKeyRequest)),
    _Route("revoke_key", "admin", "Revoke an API key at once.",
           HttpRoute("DELETE", "/api/v1/keys/{key_id}", status=204),
           path_schemas={"key_id": {"type": "string"}}, errors=(KeyNotFound,)),
    _Route("get_audit", "admin", "The audit log of mutating calls, newest first.",
           HttpRoute("GET", "/api/v1/audit", query=(
               QueryParam("limit", {"type": "integer", "minimum": 1, "maximum": 500},
                          "Page size (default 100)."),
               QueryParam("cursor", {"type": "integer", "minimum": 1},
                          "next_cursor of the previous page."),
           )), response=AuditPage),
)  # fmt: skip
_SECURITY_MODELS: set[type[BaseModel]] = {AuditPage, CreatedKey, CreateKeyRequest, KeyList}


def _components(registry: Registry) -> dict[str, Any]:
    models: set[type[BaseModel]] = {ErrorBody, Health, ImageList, ToolList, *_SECURITY_MODELS}
    models.update(route.response for route in _OTHER_ROUTES if route.response is not None)
    for op in registry:
        body = op.http.body if op.http else None
        models.update(m for m in (body, op.result) if m is not None)
    _, top = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)], ref_template=_REF
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    return schemas


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], content_type: str = "application/json") -> dict[str, Any]:
    return {content_type: {"schema": schema}}


def _error_responses(errors: tuple[type[HMError], ...]) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {500: ["INTERNAL_ERROR", "HYPERVISOR_ERROR"]}
    for err in errors:
        by_status.setdefault(err.status, [])
        if err.code not in by_status[err.status]:
            by_status[err.status].append(err.code)
    return {
        str(status): {"description": ", ".join(codes), "content": _json(_ref(ErrorBody))}
        for status, codes in sorted(by_status.items())
    }


def _request_errors(route: HttpRoute, has_body: bool) -> tuple[type[HMError], ...]:
    """What any request may get before its handler runs: auth, rate limit, bad input."""
    found: tuple[type[HMError], ...] = ()
    if not is_public_path(route.path):
        found += (Unauthorized, RateLimited)
    if is_admin_path(route.path):
        found += (Forbidden,)
    if has_body or route.query or route.headers:
        found += (ValidationFailed,)
    if has_body:
        found += (PayloadTooLarge, UnsupportedMediaType)
    return found


def _parameters(route: HttpRoute, path_schemas: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": path_schemas.get(name, {})}
        for name in route.path_params
    ]
    for where, items in (("query", route.query), ("header", route.headers)):
        for q in items:
            param: dict[str, Any] = {
                "name": q.name,
                "in": where,
                "required": q.required,
                "description": q.description,
                "schema": q.schema,
            }
            if q.repeated:
                param.update(style="form", explode=True)
            params.append(param)
    return params


def _operation_object(op: Operation, route: HttpRoute) -> dict[str, Any]:
    props = json_schema(op.input).get("properties", {})
    obj: dict[str, Any] = {
        "operationId": op.name,
        "summary": op.title,
        "description": op.description,
        "tags": ["images" if op.resource == "Image" else "vms"],
        "parameters": _parameters(route, {p: props[p] for p in route.path_params}),
        "x-agent-tool": op.name,
    }
    if route.body is not None:
        obj["requestBody"] = {
            "required": not route.body_optional,
            "content": _json(_ref(route.body)),
        }
    result: dict[str, Any] = _ref(op.result) if op.result else {"type": "object"}
    if op.resource == "Image":
        result = _ref(ImageList)
    responses: dict[str, Any] = {}
    for status in (route.status, *route.also):
        if status == 204:
            responses["204"] = {"description": "Done; no content."}
        else:
            responses[str(status)] = {"description": op.returns, "content": _json(result)}
    errors = (*op.all_errors, *_request_errors(route, route.body is not None))
    obj["responses"] = {**responses, **_error_responses(errors)}
    return obj


def _route_object(route: _Route) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "parameters": _parameters(route.http, route.path_schemas),
    }
    if route.request_schema is not None:
        media = route.request_schema.get("contentMediaType", "application/json")
        obj["requestBody"] = {"required": True, "content": _json(route.request_schema, media)}
    schema: dict[str, Any] = _ref(route.response) if route.response else {"type": "object"}
    if route.content_type.startswith("text/") or "octet" in route.content_type:
        schema = {"type": "string"}
    status = route.http.status
    if status == 101:
        ok: dict[str, Any] = {"description": "Switching protocols (websocket)."}
    elif status >= 400:
        ok = {"description": route.summary, "content": _json(_ref(ErrorBody))}
    elif status == 204:
        ok = {"description": route.summary}
    else:
        ok = {"description": route.summary, "content": _json(schema, route.content_type)}
    errors = (*route.errors, *_request_errors(route.http, route.request_schema is not None))
    obj["responses"] = {str(status): ok, **_error_responses(errors)}
    if is_public_path(route.http.path):
        obj["security"] = []  # answers without a key
    return obj


_SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An hm_… API key."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def build_openapi(registry: Registry, base: str, *, keyed: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document, with ``base`` (the server's URL) as its server.

    ``keyed``: the server requires API keys, so the document declares them.
    """
    paths: dict[str, dict[str, Any]] = {}
    for op in registry:
        if op.http is not None:
            paths.setdefault(op.http.path, {})[op.http.method.lower()] = _operation_object(
                op, op.http
            )
    for route in _OTHER_ROUTES:
        paths.setdefault(route.http.path, {})[route.http.method.lower()] = _route_object(route)
    codes = [cls.code for cls in all_error_classes()]
    components: dict[str, Any] = {"schemas": _components(registry)}
    security: dict[str, Any] = {}
    if keyed:
        components["securitySchemes"] = _SECURITY_SCHEMES
        security["security"] = [{"bearer": []}, {"apiKey": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "HyperMachine",
            "version": __version__,
            "description": (
                "QEMU virtual machines over QMP for people and AI agents. Every error is "
                "{error: {code, message, details}}; codes: " + ", ".join(codes) + "."
            ),
        },
        "servers": [{"url": base}],
        "paths": paths,
        "components": components,
        **security,
    }
