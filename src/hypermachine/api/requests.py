"""Reading request bodies and query strings into models, strictly."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel
from quart import current_app, request

from ..errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

__all__ = ["parse_body", "query_bool", "query_float", "query_int"]

M = TypeVar("M", bound=BaseModel)
_MAX_DEPTH = 32


def _depth(value: object, level: int = 0) -> int:
    if level > _MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


async def parse_body(model: type[M], *, allow_empty: bool = False) -> M:
    """The JSON body as ``model``; an empty body means ``{}`` when ``allow_empty``.

    Raises:
        PayloadTooLarge, UnsupportedMediaType,
        ValidationFailed (malformed JSON, too deep, wrong fields).
    """
    limit = current_app.extensions["hypermachine"].settings.max_body_bytes
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    raw = await request.get_data(as_text=False)
    if len(raw) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    if not raw.strip():
        if allow_empty:
            return model.model_validate({})
        raise ValidationFailed("a JSON body is required")
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            "send the body as application/json", content_type=request.mimetype or None
        )
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise ValidationFailed(f"body is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValidationFailed("body must be a JSON object")
    if _depth(data) > _MAX_DEPTH:
        raise ValidationFailed(f"body nests deeper than {_MAX_DEPTH} levels")
    return model.model_validate(data)


def query_bool(name: str, default: bool = False) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", ""):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(f"query parameter {name} must be true or false", value=raw)


def query_int(name: str, *, default: int | None, low: int, high: int) -> int | None:
    """An integer query parameter in ``[low, high]``, or ``default`` when absent.

    Raises:
        ValidationFailed: not an integer, or out of range.
    """
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as err:
        raise ValidationFailed(f"{name} must be an integer", value=raw) from err
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be between {low} and {high}", value=value)
    return value


def query_float(name: str, *, default: float, low: float, high: float) -> float:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as err:
        raise ValidationFailed(f"query parameter {name} must be a number", value=raw) from err
    if not low < value <= high:
        raise ValidationFailed(f"query parameter {name} must be in ({low:g}, {high:g}]", value=raw)
    return value
