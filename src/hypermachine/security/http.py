"""The HTTP face of the security layer: every request and websocket passes here first.

``before`` authenticates (401 for a bad key), sets the caller for the handler's task and counts
the request against the key's rate limit (429); ``after`` adds the ``RateLimit-*``
headers, ``Retry-After`` and ``WWW-Authenticate``. Both run for error responses
too, so every refusal is in the usual error format.
"""

from __future__ import annotations

from typing import Any

from quart import Response, current_app, g, request, websocket
from quart_trio import QuartTrio

from ..cluster.forwarding import NodeAuth, is_forwarded, unsigned
from ..errors import Forbidden, RateLimited, Unauthorized
from .caller import ANONYMOUS, Caller, set_caller
from .service import Security
from .web import host_allowed

__all__ = ["install_security", "raw_body", "raw_target", "security", "websocket_target"]

_CHALLENGE = 'Bearer realm="hypermachine", charset="UTF-8"'


def security() -> Security:
    found: Security = current_app.extensions["hypermachine.security"]
    return found


async def _admit(
    headers: Any, matched: bool, token: str | None = None, forwarded: Caller | None = None
) -> None:
    guard = security()
    # A forwarded request's caller: another node of the cluster checked its key.
    caller = forwarded if forwarded is not None else await _authenticate(guard, headers, token)
    if forwarded is ANONYMOUS and token is not None:  # a browser's console, relayed
        caller = _token_caller(token)
    if not matched and caller is ANONYMOUS:
        raise Unauthorized("an API key is required (Authorization: Bearer hm_…)")
    set_caller(caller)
    decision = await guard.rate_limit(caller)
    g.hm_rate = decision
    if decision is not None and not decision.allowed:
        raise RateLimited(
            f"more than {decision.limit} requests in a minute for this key",
            limit=decision.limit,
            retry_after_s=decision.retry_after_s,
        )


async def _authenticate(guard: Security, headers: Any, token: str | None) -> Caller:
    await guard.refresh()
    if guard.mode() == "open" and not host_allowed(
        headers.get("Host"), guard.settings.allowed_origins
    ):
        # No key guards an open server: a page that rebinds its own name to 127.0.0.1
        # must not drive it. Only requests naming loopback (or a configured host) pass.
        raise Forbidden(
            "this open server answers only requests to a loopback host (or one in allowed_origins)",
            host=str(headers.get("Host"))[:200],
        )
    caller = await guard.authenticate(headers)
    if token is not None and caller is ANONYMOUS:
        caller = _token_caller(token)
    return caller


def _token_caller(token: str) -> Caller:
    """A browser's console websocket: the token stands for the key that asked for it;
    the console operation spends it (bound to that VM and console kind)."""
    found: Caller = current_app.extensions["hypermachine"].console_tokens.caller_of(token)
    return found


async def raw_body() -> bytes:
    body = await request.get_data(as_text=False)
    return body if isinstance(body, bytes) else body.encode()


def raw_target() -> bytes:
    """The request's path and query as they came (what a forwarding node signs)."""
    return _target(request.scope, request.path)


def websocket_target() -> bytes:
    """The websocket request's path and query as they came."""
    return _target(websocket.scope, websocket.path)


def _target(scope: Any, path: str) -> bytes:
    raw = scope.get("raw_path") or path.encode()
    query = scope.get("query_string") or b""
    return bytes(raw) + (b"?" + bytes(query) if query else b"")


def _forwarded_caller(
    headers: dict[str, str], method: str, target: bytes, body: bytes
) -> Caller | None:
    """The caller of a request (or websocket) another node forwarded, signed with the
    cluster secret; None for one not forwarded.

    Raises:
        Unauthorized: it claims to be forwarded without a valid signature.
    """
    auth: NodeAuth | None = current_app.extensions.get("hypermachine.node_auth")
    if auth is None:
        refusal = unsigned(headers)
        if refusal is not None:
            raise refusal
        return None
    if not is_forwarded(headers):
        return None
    return auth.caller_of(headers, method, target.decode(), body)


async def _before_request() -> None:
    g.hm_rate = None
    headers = dict(request.headers)
    body = await raw_body() if is_forwarded(headers) else b""  # signed with the request
    forwarded = _forwarded_caller(headers, request.method, raw_target(), body)
    await _admit(request.headers, request.url_rule is not None, forwarded=forwarded)


async def _before_websocket() -> None:
    g.hm_rate = None
    forwarded = _forwarded_caller(dict(websocket.headers), "GET", websocket_target(), b"")
    token = websocket.args.get("token")
    await _admit(websocket.headers, websocket.url_rule is not None, token, forwarded=forwarded)


async def _after_request(response: Response) -> Response:
    decision = g.get("hm_rate")
    if decision is not None:
        response.headers.update(decision.headers())
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = _CHALLENGE
    return response


def install_security(app: QuartTrio, guard: Security) -> None:
    """Put ``guard`` in front of every route of ``app`` (register it first)."""
    app.extensions["hypermachine.security"] = guard
    app.before_request(_before_request)
    app.before_websocket(_before_websocket)
    app.after_request(_after_request)
