"""``GET /api/v1/events``: the event log as server-sent events, resumable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from quart import Blueprint, Response, request

from ..errors import ValidationFailed
from ..models import Event
from ..security.caller import Caller, current_caller
from .services import services
from .sse import SseMessage, sse_response

__all__ = ["blueprint"]

blueprint = Blueprint("events", __name__)


def _start_after() -> int:
    """Resume after ``Last-Event-ID`` (or ``?after=``); by default only new events."""
    raw = request.headers.get("Last-Event-ID") or request.args.get("after")
    if raw is None:
        return services().manager.events.latest_id()
    if not raw.isdigit():
        raise ValidationFailed("Last-Event-ID / after must be an event id", value=raw)
    return int(raw)


def _visibility(caller: Caller) -> Callable[[Event], bool]:
    """Which events ``caller`` may see: those of its own tenant's VMs (all, for admins).

    A VM's tenant is looked up once per stream; a VM the server no longer knows is
    hidden from non-admins (fail closed) unless it was seen while it existed.
    """
    owners: dict[str, str | None] = {}
    manager = services().manager

    def visible(event: Event) -> bool:
        if caller.admin or event.vm_id is None:
            return True
        if event.vm_id not in owners:
            owners[event.vm_id] = manager.owner_of(event.vm_id)
        owner = owners[event.vm_id]
        return owner is not None and caller.sees(owner)

    return visible


@blueprint.get("")
async def events() -> Response:
    svc = services()
    # Not checked against live VMs: a deleted VM's history (ending in vm.deleted) stays readable.
    vm_id = request.args.get("vm_id") or None
    follow = svc.manager.events.follow(
        _start_after(), vm_id=vm_id, idle_s=svc.settings.sse_keepalive_s
    )
    visible = _visibility(current_caller())

    async def messages() -> AsyncIterator[SseMessage]:
        async for event in follow:
            if event is None:
                yield None
            elif visible(event):
                yield event.type.value, event.model_dump(mode="json"), str(event.id)

    return sse_response(messages())
