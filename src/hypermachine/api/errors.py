"""One place where every failure becomes ``{"error": {code, message, details}}``."""

from __future__ import annotations

import logging

from pydantic import ValidationError
from quart import Response, jsonify
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..errors import (
    HMError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)

__all__ = ["error_response", "register_error_handlers", "validation_details"]

log = logging.getLogger(__name__)

_HTTP_ERRORS: dict[int, type[HMError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def validation_details(err: ValidationError) -> list[dict[str, str]]:
    """Field paths and messages, without echoing the (possibly huge) input back."""
    return [
        {
            "field": ".".join(str(part) for part in e["loc"]) or "(body)",
            "message": e["msg"],
            "type": e["type"],
        }
        for e in err.errors(include_url=False, include_input=False)
    ]


def error_response(err: HMError) -> Response:
    response = jsonify(err.body())
    response.status_code = err.status
    return response


def register_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(HMError)
    async def _hm_error(err: HMError) -> Response:
        return error_response(err)

    @app.errorhandler(ValidationError)
    async def _validation(err: ValidationError) -> Response:
        details = validation_details(err)
        first = details[0] if details else {"field": "(body)", "message": "invalid"}
        return error_response(
            ValidationFailed(f"{first['field']}: {first['message']}", errors=details)
        )

    @app.errorhandler(HTTPException)
    async def _http(err: HTTPException) -> Response:
        cls = _HTTP_ERRORS.get(err.code or 500, HMError)
        response = error_response(cls(err.description or err.name))
        if err.code == 405 and isinstance(err, HTTPException):
            response.status_code = 405
        return response

    @app.errorhandler(Exception)
    async def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error", exc_info=err)
        return error_response(HMError("internal error; see the server log"))
