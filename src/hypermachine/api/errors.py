"""One place where every failure becomes ``{"error": {code, message, details}}``."""

from __future__ import annotations

import logging

from pydantic import ValidationError
from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..errors import (
    BadRequest,
    HMError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    validation_failed,
)

__all__ = [
    "error_response",
    "http_error_response",
    "register_error_handlers",
    "validation_response",
]

log = logging.getLogger(__name__)

_HTTP_ERRORS: dict[int, type[HMError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


def error_response(err: HMError) -> Response:
    response = jsonify(err.body())
    response.status_code = err.status
    return response


def validation_response(err: ValidationError) -> Response:
    return error_response(validation_failed(err))


def http_error_response(err: HTTPException) -> Response:
    """Quart's and Werkzeug's own HTTP errors keep their status, in our format."""
    status = err.code or 500
    cls = _HTTP_ERRORS.get(status) or (BadRequest if 400 <= status < 500 else HMError)
    response = error_response(cls(err.description or err.name))
    response.status_code = status
    return response


def register_error_handlers(app: QuartTrio) -> None:
    @app.errorhandler(HMError)
    async def _hm_error(err: HMError) -> Response:
        return error_response(err)

    @app.errorhandler(ValidationError)
    async def _validation(err: ValidationError) -> Response:
        return validation_response(err)

    @app.errorhandler(HTTPException)
    async def _http(err: HTTPException) -> Response:
        return http_error_response(err)

    @app.errorhandler(Exception)
    async def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error", exc_info=err)
        return error_response(HMError("internal error; see the server log"))

    app.after_request(_close_after_a_refused_body)


async def _close_after_a_refused_body(response: Response) -> Response:
    """An error answering a request that came with a body ends the connection.

    Such answers often come before the body was read (no route, no key, a rate limit),
    and on a kept-alive connection hypercorn's Trio worker then sometimes never answers
    the next request (about 1 in 20 here); closing costs the client one reconnection.
    """
    has_body = request.content_length or "chunked" in request.headers.get("Transfer-Encoding", "")
    if response.status_code >= 400 and has_body:
        response.headers["Connection"] = "close"
    return response
