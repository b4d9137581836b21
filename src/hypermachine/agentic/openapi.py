"""The OpenAPI 3.1 document for every route, generated (pure).

Every route is an operation of the registry: its path, body, query and header
parameters (typed by the input fields they fill, exactly as the REST face parses
them), result model, access (public routes need no key) and errors. Schemas are
the pydantic models' own JSON Schemas under ``components/schemas``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..errors import (
    Forbidden,
    GuestFileTooLarge,
    HMError,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    VmNotFound,
    all_error_classes,
)
from ..models import ImageInfo
from ..operations.declare import Access, HttpRoute, Operation, Registry
from .schemas import field_schemas

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


_RESULTS: dict[str, type[BaseModel]] = {
    "get_health": Health,
    "list_images": ImageList,
    "get_tool_definitions": ToolList,
}
"""Result models of operations whose handlers build plain objects."""


def _components(registry: Registry) -> dict[str, Any]:
    models: set[type[BaseModel]] = {ErrorBody, *_RESULTS.values()}
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


def _request_errors(op: Operation, route: HttpRoute) -> tuple[type[HMError], ...]:
    """What any request may get before its handler runs: auth, rate limit, bad input."""
    found: tuple[type[HMError], ...] = ()
    if op.access is not Access.PUBLIC:
        found += (Unauthorized, RateLimited)
    if op.access is Access.ADMIN:
        found += (Forbidden,)
    if op.access is Access.TENANT:
        found += (VmNotFound,)
    found += (ValidationFailed,)  # a bad path parameter, an undeclared query parameter
    if route.body is not None:
        found += (PayloadTooLarge, UnsupportedMediaType)
    if route.raw_body:
        found += (GuestFileTooLarge,)
    return found


def _parameters(op: Operation, route: HttpRoute) -> list[dict[str, Any]]:
    """Path, query and header parameters, each typed by the input field it fills."""
    fields = field_schemas(op.input)
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": fields.get(name, {})}
        for name in route.path_params
    ]
    for where, items in (("query", route.query), ("header", route.headers)):
        for q in items:
            param: dict[str, Any] = {
                "name": q.name,
                "in": where,
                "required": q.required,
                "description": q.description,
                "schema": fields[q.target],
            }
            if q.repeated:
                param.update(style="form", explode=True)
            params.append(param)
    return params


def _request_body(route: HttpRoute) -> dict[str, Any] | None:
    if route.raw_body:
        raw = {"type": "string", "contentMediaType": "application/octet-stream"}
        return {"required": True, "content": _json(raw, "application/octet-stream")}
    if route.body is None:
        return None
    return {"required": not route.body_optional, "content": _json(_ref(route.body))}


def _success(op: Operation, route: HttpRoute) -> dict[str, Any]:
    model = _RESULTS.get(op.name) or op.result
    schema: dict[str, Any] = _ref(model) if model else {"type": "object"}
    if route.content != "application/json" and not route.content.endswith("+json"):
        schema = {"type": "string"}
    responses: dict[str, Any] = {}
    for status in (route.status, *route.also):
        if route.websocket:
            responses["101"] = {"description": "Switching protocols (websocket)."}
        elif status == 204:
            responses["204"] = {"description": "Done; no content."}
        elif status >= 400:
            responses[str(status)] = {"description": op.summary, "content": _json(_ref(ErrorBody))}
        else:
            responses[str(status)] = {
                "description": op.returns,
                "content": _json(schema, route.content),
            }
    return responses


def _operation_object(op: Operation, route: HttpRoute) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "operationId": op.name,
        "summary": op.title,
        "description": op.description,
        "tags": [op.tag],
        "parameters": _parameters(op, route),
        "x-access": op.access.value,
    }
    if op.tool:
        obj["x-agent-tool"] = op.name
    body = _request_body(route)
    if body is not None:
        obj["requestBody"] = body
    errors = (*op.all_errors, *_request_errors(op, route))
    obj["responses"] = {**_success(op, route), **_error_responses(errors)}
    if op.access is Access.PUBLIC:
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
