"""The console websocket: the one operation REST serves with a custom view.

The view checks the page's ``Origin`` (a foreign web page must not type into a
VM), then asks the dispatcher for the ``open_vm_console`` operation — the same
access check and audit as every route — and pumps bytes both ways: serial output
as binary frames out, text or binary frames typed in. Refusals come before the
upgrade, as ordinary error responses.
"""

from __future__ import annotations

import trio
from pydantic import ValidationError
from quart import Response, websocket

from ..errors import Forbidden, HMError
from ..security.caller import current_caller
from ..security.web import origin_allowed
from .errors import error_response, validation_response
from .rest import dispatcher

__all__ = ["console_view"]

_READ = 4096


async def console_view(vm_id: str) -> Response | None:
    allowed = dispatcher().services.settings.allowed_origins
    if not origin_allowed(websocket.headers.get("Origin"), allowed):
        return error_response(Forbidden("this Origin may not open a console"))
    try:
        session = await dispatcher().call("open_vm_console", current_caller(), {"vm_id": vm_id})
    except HMError as err:
        return error_response(err)
    except ValidationError as err:
        return validation_response(err)
    async with session as stream:  # type: ignore[attr-defined]
        await websocket.accept()
        await _pump(stream)
    return None


async def _pump(stream: trio.SocketStream) -> None:
    async with trio.open_nursery() as nursery:

        async def guest_to_client() -> None:
            while data := await stream.receive_some(_READ):
                await websocket.send(data)
            nursery.cancel_scope.cancel()  # QEMU closed the console (the VM stopped)

        nursery.start_soon(guest_to_client)
        while True:
            message = await websocket.receive()
            await stream.send_all(message.encode() if isinstance(message, str) else message)
