"""``GET /api/v1/events``: the event log as server-sent events, resumable."""

from __future__ import annotations

from collections.abc import AsyncIterator

from quart import Blueprint, Response, request

from ..errors import ValidationFailed
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


@blueprint.get("")
async def events() -> Response:
    svc = services()
    # Not checked against live VMs: a deleted VM's history (ending in vm.deleted) stays readable.
    vm_id = request.args.get("vm_id") or None
    follow = svc.manager.events.follow(
        _start_after(), vm_id=vm_id, idle_s=svc.settings.sse_keepalive_s
    )

    async def messages() -> AsyncIterator[SseMessage]:
        async for event in follow:
            if event is None:
                yield None
            else:
                yield event.type.value, event.model_dump(mode="json"), str(event.id)

    return sse_response(messages())
