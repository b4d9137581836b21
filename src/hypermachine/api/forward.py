"""The REST face of forwarding (cluster/forwarding.py): a request for a VM another
node owns is answered by that node, and a new VM is created where placement puts it.
Registered after the security layer, so the caller is authenticated here first. A
console websocket is relayed frame by frame (:func:`relay_websocket`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import httpx
import trio
from httpx_ws import (
    AsyncWebSocketSession,
    WebSocketDisconnect,
    WebSocketNetworkError,
    WebSocketUpgradeError,
    aconnect_ws,
)
from pydantic import ValidationError
from quart import Response, request, websocket
from quart_trio import QuartTrio
from wsproto.events import BytesMessage, TextMessage

from ..cluster.forwarding import Forwarder, is_forwarded, is_vm_read, vm_of
from ..errors import ClusterUnavailable
from ..models import CreateVmRequest
from ..security.caller import current_caller
from ..security.http import raw_body, raw_target, websocket_target

__all__ = ["install_forwarding", "relay_websocket"]

# What of the owner's answer reaches the caller.
_ANSWER_HEADERS = ("content-type", "location", "retry-after")


async def _placement(forwarder: Forwarder) -> str | None:
    """Where a create goes; None (answered here) for one this node takes, and for a body
    the create operation itself will refuse or that is a template (``from_snapshot``)."""
    try:
        create = CreateVmRequest.model_validate(json.loads(await raw_body()))
    except (ValueError, ValidationError):
        return None
    return await forwarder.placement_url(create)


def install_forwarding(app: QuartTrio, forwarder: Forwarder) -> None:
    async def forward() -> Response | None:
        if is_forwarded(dict(request.headers)):
            return None  # forwarded already: answered here
        vm_id = vm_of(request.path)
        if vm_id is not None:
            viewable = is_vm_read(request.method, request.path)
            url = await forwarder.owner_url(vm_id, viewable=viewable)
        elif request.method == "POST" and request.path == "/api/v1/vms":
            url = await _placement(forwarder)
        else:
            return None
        if url is None:
            return None
        body, headers = await raw_body(), dict(request.headers)
        answer = await forwarder.send(url, request.method, raw_target(), body, headers)
        kept = {k: v for k, v in answer.headers.items() if k.lower() in _ANSWER_HEADERS}
        return Response(_relayed(answer), status=answer.status_code, headers=kept)

    app.before_request(forward)


async def _relayed(answer: httpx.Response) -> AsyncIterator[bytes]:
    """The owner's answer as it arrives (an event stream's events one by one)."""
    try:
        async for chunk in answer.aiter_bytes():
            yield chunk
    finally:
        with trio.CancelScope(shield=True):
            await answer.aclose()


async def relay_websocket(forwarder: Forwarder, url: str) -> Response | None:
    """Open the same websocket on the VM's owner at ``url``, signed as the current
    caller, and relay frames both ways; the owner's refusal is answered as it came."""
    target = websocket_target()
    signed = forwarder.auth.headers(current_caller(), "GET", target.decode(), b"")
    origin = websocket.headers.get("Origin")
    headers = {**signed, **({"Origin": origin} if origin else {})}
    owner = httpx.URL(url).copy_with(scheme="ws" if url.startswith("http:") else "wss")
    path, _, query = target.partition(b"?")
    address = str(owner.copy_with(raw_path=target if query else path))
    # The owner's refusal is read while the upgrade's response is still open.
    hooks = {"response": [_read_refusal]}
    try:
        async with httpx.AsyncClient(timeout=60, event_hooks=hooks) as http:
            session: AbstractAsyncContextManager[AsyncWebSocketSession] = aconnect_ws(
                address, http, headers=headers, keepalive_ping_interval_seconds=None
            )
            async with session as upstream:
                await websocket.accept()
                await _relay(upstream)
    except WebSocketUpgradeError as err:
        answer = err.response
        kept = {k: v for k, v in answer.headers.items() if k.lower() in _ANSWER_HEADERS}
        return Response(answer.content, status=answer.status_code,
                        headers={**kept, "Connection": "close"})  # fmt: skip
    except (httpx.TransportError, WebSocketNetworkError) as err:
        raise ClusterUnavailable(f"the VM's node at {url} did not answer: {err!r}") from err
    return None


async def _read_refusal(response: httpx.Response) -> None:
    if response.status_code != 101:
        await response.aread()


async def _relay(upstream: AsyncWebSocketSession) -> None:
    async with trio.open_nursery() as nursery:

        async def owner_to_client() -> None:
            try:
                while True:
                    message = await upstream.receive()
                    if isinstance(message, BytesMessage):
                        await websocket.send(bytes(message.data))
                    elif isinstance(message, TextMessage):
                        await websocket.send(message.data)
            except WebSocketDisconnect:
                nursery.cancel_scope.cancel()  # the owner ended the console

        nursery.start_soon(owner_to_client)
        while True:
            frame = await websocket.receive()
            if isinstance(frame, str):
                await upstream.send_text(frame)
            else:
                await upstream.send_bytes(frame)
