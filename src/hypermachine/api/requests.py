"""Reading a request's JSON body, strictly (size, media type, syntax, depth)."""

from __future__ import annotations

import json

from quart import current_app, request

from ..errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed

__all__ = ["read_json_object"]

_MAX_DEPTH = 32


def _depth(value: object, level: int = 0) -> int:
    if level > _MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


async def read_json_object(*, allow_empty: bool = False) -> dict[str, object]:
    """The JSON object of the request body; an empty body is ``{}`` when ``allow_empty``.

    Raises:
        PayloadTooLarge, UnsupportedMediaType,
        ValidationFailed (malformed JSON, not an object, too deep).
    """
    limit = current_app.extensions["hypermachine"].settings.max_body_bytes
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    raw = await request.get_data(as_text=False)
    if len(raw) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    if not raw.strip():
        if allow_empty:
            return {}
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
    return data
