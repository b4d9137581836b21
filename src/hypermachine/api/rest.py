"""The REST face: one route per declared operation, generated from its declaration.

A route reads the path, the declared query and header parameters (typed by the
input model's own fields; an undeclared parameter is refused) and the JSON or raw
body into the operation's arguments, hands them to the dispatcher with the
request's caller, and renders what comes back. No route validates, looks a VM up
or checks access by itself: the dispatcher does, for every face alike.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel
from quart import Response, current_app, request
from quart_trio import QuartTrio

from ..agentic.schemas import field_schemas
from ..errors import GuestFileTooLarge, ValidationFailed
from ..operations import (
    Answer,
    ByteStream,
    Dispatcher,
    Document,
    EventStream,
    HttpRoute,
    Operation,
    QueryParam,
    RawJson,
)
from ..operations.dispatch import check_access
from ..security.caller import current_caller
from .requests import read_json_object
from .sse import sse_response

__all__ = ["View", "dispatcher", "generic_view", "mount", "quart_rule", "render"]

View = Callable[..., Awaitable[Any]]
"""A custom view for an operation REST cannot render generically (websocket, MCP)."""

_INTEGER = re.compile(r"^-?[0-9]{1,19}$")
_NUMBER = re.compile(r"^-?[0-9]{1,19}(\.[0-9]{1,19})?([eE][-+]?[0-9]{1,3})?$")
_TRUE, _FALSE = ("1", "true", "yes", ""), ("0", "false", "no")


def dispatcher() -> Dispatcher:
    found: Dispatcher = current_app.extensions["hypermachine.dispatcher"]
    return found


def quart_rule(path: str, slashed: tuple[str, ...] = ()) -> str:
    """``/api/v1/vms/{vm_id}`` as Quart writes it: ``/api/v1/vms/<vm_id>`` (a parameter
    named in ``slashed`` may span segments: ``<path:name>``)."""
    return re.sub(r"{(\w+)}", lambda m: f"<path:{m[1]}>" if m[1] in slashed else f"<{m[1]}>", path)


def mount(app: QuartTrio, ops: Dispatcher, custom: Mapping[str, View]) -> None:
    """A route for every operation with an HTTP route; ``custom`` views by name."""
    app.extensions["hypermachine.dispatcher"] = ops
    for op in ops.registry:
        route = op.http
        if route is None:
            continue
        view = custom.get(op.name) or generic_view(op)
        if route.websocket:
            app.add_websocket(quart_rule(route.path), endpoint=op.name, view_func=view)
        else:
            rule = quart_rule(route.path, route.slashed)
            app.add_url_rule(rule, endpoint=op.name, view_func=view, methods=[route.method])
    missing = set(custom) - {op.name for op in ops.registry if op.http is not None}
    if missing:
        raise ValueError(f"custom views for operations without a route: {sorted(missing)}")


def generic_view(op: Operation) -> View:
    async def view(**path: str) -> Response:
        check_access(op.access, current_caller())  # who may call, before reading the body
        arguments = await _arguments(op, path)
        base = request.host_url.rstrip("/")
        result = await dispatcher().call(op.name, current_caller(), arguments, base_url=base)
        return render(result, op.http)  # type: ignore[arg-type]

    view.__name__ = op.name
    return view


# -- reading a request ------------------------------------------------------------------


async def _arguments(op: Operation, path: Mapping[str, str]) -> dict[str, Any]:
    route = op.http
    assert route is not None
    arguments: dict[str, Any] = {}
    if route.raw_body:
        arguments["data"] = await _raw_body()
    elif route.body is not None:
        body = await read_json_object(allow_empty=route.body_optional)
        _only_body_fields(route.body, body)
        arguments.update(body)
    arguments.update(query_arguments(op, request.args))
    arguments.update(_header_arguments(op))
    arguments.update(path)
    return arguments


def _only_body_fields(model: type[BaseModel], body: Mapping[str, Any]) -> None:
    """The body may carry only its own model's fields (not ``vm_id``, not a header's):
    the input model, which validates everything once, has more.

    Raises:
        ValidationFailed: a field the body model does not have.
    """
    if model.model_config.get("extra") == "allow":
        return
    extra = [key for key in body if key not in model.model_fields]
    if extra:
        errors = [
            {"field": key, "message": "Extra inputs are not permitted", "type": "extra_forbidden"}
            for key in extra[:20]
        ]
        raise ValidationFailed(f"{extra[0]}: Extra inputs are not permitted", errors=errors)


async def _raw_body() -> bytes:
    limit = current_app.extensions["hypermachine"].settings.file_max_bytes
    if (request.content_length or 0) > limit:
        raise GuestFileTooLarge(f"the file is larger than the limit of {limit} bytes")
    data = bytearray()
    async for chunk in request.body:
        data += chunk
        if len(data) > limit:
            raise GuestFileTooLarge(f"the file is larger than the limit of {limit} bytes")
    return bytes(data)


def query_arguments(op: Operation, args: Any) -> dict[str, Any]:
    """The declared query parameters of ``op`` in ``args`` (a multi-dict), typed.

    Raises:
        ValidationFailed: an undeclared parameter, a repeated single one, or a value
            that is not of its field's type (``?tail=²`` is no integer).
    """
    route = op.http
    assert route is not None
    declared = {q.name: q for q in route.query}
    unknown = sorted(set(args) - set(declared))
    if unknown:
        raise ValidationFailed(
            f"unknown query parameter {unknown[0]!r}", unknown=unknown[:10], allowed=list(declared)
        )
    schemas = field_schemas(op.input)
    found: dict[str, Any] = {}
    for param in route.query:
        values = args.getlist(param.name)
        if values:
            found[param.target] = _typed(param, values, schemas[param.target])
    return found


def _header_arguments(op: Operation) -> dict[str, Any]:
    route = op.http
    assert route is not None
    schemas = field_schemas(op.input)
    return {
        param.target: _typed(param, [value], schemas[param.target])
        for param in route.headers
        if (value := request.headers.get(param.name)) is not None
    }


def _typed(param: QueryParam, values: list[str], schema: Mapping[str, Any]) -> Any:
    kind = _kind(schema)
    if param.repeated or kind == "array":
        return values
    if len(values) > 1:
        raise ValidationFailed(f"{param.name} is given more than once", field=param.name)
    return _scalar(param.name, values[0], kind)


def _kind(schema: Mapping[str, Any]) -> str:
    """The JSON type of a field's schema (the non-null one of ``X | None``)."""
    if "type" in schema:
        return str(schema["type"])
    for option in schema.get("anyOf", ()):
        if option.get("type") not in (None, "null"):
            return str(option["type"])
    return "string"


def _scalar(name: str, raw: str, kind: str) -> Any:
    if kind == "integer":
        if not _INTEGER.match(raw):
            raise ValidationFailed(f"{name} must be a whole number", field=name, value=raw[:100])
        return int(raw)
    if kind == "number":
        if not _NUMBER.match(raw) or not math.isfinite(float(raw)):
            raise ValidationFailed(f"{name} must be a number", field=name, value=raw[:100])
        return float(raw)
    if kind == "boolean":
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValidationFailed(f"{name} must be true or false", field=name, value=raw[:100])
    return raw


# -- answering --------------------------------------------------------------------------


def render(result: object, route: HttpRoute) -> Response:
    """The HTTP response for an operation's result."""
    status, headers = route.status, {}
    if isinstance(result, Answer):
        status, headers, result = result.status or route.status, dict(result.headers), result.body
    if status == 204:
        return Response("", status=204, headers=headers)
    if isinstance(result, EventStream):
        return sse_response(result.messages)
    if isinstance(result, ByteStream):
        response = Response(result.chunks, mimetype="application/octet-stream")
        response.headers.update(result.headers)
        response.timeout = None
        return response
    if isinstance(result, Document):
        response = Response(result.data, status=status, content_type=result.content_type)
        response.headers.update(result.headers)
        if result.max_age is not None:
            response.cache_control.max_age = result.max_age
        return response
    return current_app.response_class(
        _json_text(result), status=status, headers=headers, mimetype="application/json"
    )


def _json_text(result: object) -> str:
    if isinstance(result, RawJson):
        return result.text
    if isinstance(result, BaseModel):
        return result.model_dump_json()  # serialized in pydantic's core (fast)
    return json.dumps(result, default=str)
