"""Server-sent events: one formatter and one response shape for every stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from quart import Response

__all__ = ["SseMessage", "sse_message", "sse_response"]

# (event name, JSON-able data, id) or None for "idle, send a keep-alive comment"
SseMessage = tuple[str, object, str | None] | None


def sse_message(event: str, data: object, event_id: str | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


async def _frames(messages: AsyncIterator[SseMessage]) -> AsyncIterator[bytes]:
    yield b": stream open\n\n"  # headers and a first byte reach the client at once
    async for message in messages:
        yield b": keep-alive\n\n" if message is None else sse_message(*message)


def sse_response(messages: AsyncIterator[SseMessage]) -> Response:
    """A never-timing-out ``text/event-stream`` response (the client ends it)."""
    response = Response(_frames(messages), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    response.timeout = None
    return response
