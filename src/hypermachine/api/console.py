"""The console websockets: the operations REST serves with a custom view.

``open_vm_console`` (the serial port) and ``open_vm_display`` (the VNC server of a
VM with a display, which QEMU 7.2 offers only on a unix socket) share one view.
It checks the page's ``Origin`` (a foreign web page must not type into a VM),
then asks the dispatcher for the operation — the same access check and audit as
every route; a browser's ``?token=`` is spent there — and pumps bytes both ways:
the VM's bytes as binary frames out, text or binary frames in. Refusals come
before the upgrade, as ordinary error responses.
"""

from __future__ import annotations

from collections.abc import Mapping

import trio
from pydantic import ValidationError
from quart import Response, websocket

from ..cluster.forwarding import is_forwarded
from ..errors import Forbidden, HMError
from ..operations.dispatch import check_access
from ..security.caller import current_caller
from ..security.web import origin_allowed
from .errors import error_response, validation_response
from .forward import relay_websocket
from .rest import View, dispatcher, query_arguments

__all__ = ["console_views"]

_READ = 16384


def console_views() -> Mapping[str, View]:
    """The websocket view of each console operation, by name."""
    return {name: _session_view(name) for name in ("open_vm_console", "open_vm_display")}


def _session_view(name: str) -> View:
    async def view(vm_id: str) -> Response | None:
        ops = dispatcher()
        if not origin_allowed(
            websocket.headers.get("Origin"), ops.services.settings.allowed_origins
        ):
            return _refused(error_response(Forbidden("this Origin may not open a console")))
        forwarder = ops.services.forwarder
        try:
            check_access(ops.registry.get(name).access, current_caller())
            if forwarder is not None and not is_forwarded(dict(websocket.headers)):
                owner = await forwarder.owner_url(vm_id)
                if owner is not None:  # another node runs the VM: its console, relayed
                    return await relay_websocket(forwarder, owner)
            arguments = {**query_arguments(ops.registry.get(name), websocket.args), "vm_id": vm_id}
            session = await ops.call(name, current_caller(), arguments)
        except HMError as err:
            return _refused(error_response(err))
        except ValidationError as err:
            return _refused(validation_response(err))
        async with session as stream:  # type: ignore[attr-defined]
            await websocket.accept()
            await _pump(stream)
        return None

    view.__name__ = name
    return view


def _refused(response: Response) -> Response:
    """A refused upgrade ends its connection: hypercorn may leave a kept-alive one that
    refused an upgrade unanswered, and the client's next request on it then fails."""
    response.headers["Connection"] = "close"
    return response


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
