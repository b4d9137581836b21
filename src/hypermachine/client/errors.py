"""The API's error responses as exceptions: the server's own classes, found by code.

``hypermachine.errors`` has one class per error code and no dependencies, so the
client raises the very classes the server raises (``VmNotFound``, ``InvalidState``,
``RateLimited`` …), each carrying ``code``, ``message`` and ``details``. A code this
client does not know (a newer server) becomes a class of that name made on the fly,
derived from the class of its HTTP status, so ``except Conflict`` still catches it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from ..errors import (
    BadRequest,
    Conflict,
    Forbidden,
    HMError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnsupportedMediaType,
    all_error_classes,
)

__all__ = ["error_class", "error_from_response"]

_BY_CODE: dict[str, type[HMError]] = {cls.code: cls for cls in all_error_classes()}
_BY_STATUS: dict[int, type[HMError]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        RateLimited,
    )
}


def error_class(code: str, status: int) -> type[HMError]:
    """The class for ``code``; an unknown code gets one, derived from its status's class."""
    known = _BY_CODE.get(code)
    if known is None:
        base = _BY_STATUS.get(status, HMError)
        name = "".join(part.capitalize() for part in code.split("_")) or "UnknownError"
        known = type(name, (base,), {"code": code, "status": status, "__module__": __name__})
        _BY_CODE[code] = known
    return known


def _error_body(response: httpx.Response) -> tuple[str, str, dict[str, Any]]:
    try:
        error = json.loads(response.content)["error"]
        return str(error["code"]), str(error["message"]), dict(error.get("details") or {})
    except (ValueError, KeyError, TypeError):  # not our JSON: a proxy's page, say
        text = response.content[:200].decode("utf-8", "replace").strip()
        return f"HTTP_{response.status_code}", text or response.reason_phrase, {}


def error_from_response(response: httpx.Response) -> HMError:
    """The exception for an error response (its body must have been read)."""
    code, message, details = _error_body(response)
    if "retry_after_s" not in details and "Retry-After" in response.headers:
        retry_after = response.headers["Retry-After"]
        if retry_after.isdigit():
            details["retry_after_s"] = int(retry_after)
    return error_class(code, response.status_code)(message, **details)
