"""``/api/v1/vms/{id}/console``: the serial console log and an interactive websocket."""

from __future__ import annotations

import trio
from quart import Blueprint, Response, request, websocket

from ..errors import HMError, ValidationFailed
from .errors import error_response
from .services import services

__all__ = ["blueprint"]

blueprint = Blueprint("console", __name__)

_DEFAULT_TAIL = 100
_MAX_TAIL = 10_000
_READ = 4096


def _tail() -> int:
    raw = request.args.get("tail", str(_DEFAULT_TAIL))
    if not raw.isdigit() or int(raw) > _MAX_TAIL:
        raise ValidationFailed(f"tail must be a whole number of lines, 0-{_MAX_TAIL}", value=raw)
    return int(raw)


@blueprint.get("/<vm_id>/console/log")
async def console_log(vm_id: str) -> dict[str, object]:
    lines = services().manager.console.log(vm_id, _tail())
    return {"vm_id": vm_id, "lines": lines}


@blueprint.websocket("/<vm_id>/console")
async def console_session(vm_id: str) -> Response | None:
    """Serial output goes out as binary frames; text or binary frames are typed in.

    Refused before the upgrade (an HTTP error response) when the VM does not run
    or another client holds the console.
    """
    try:
        async with services().manager.console.session(vm_id) as stream:
            await websocket.accept()
            await _pump(stream)
    except HMError as err:
        return error_response(err)
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
