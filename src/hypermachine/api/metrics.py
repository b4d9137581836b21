"""Per-request counters for ``/metrics`` (the route itself is an operation)."""

from __future__ import annotations

import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from .services import services

__all__ = ["install_request_metrics"]


async def _start_clock() -> None:
    g.hm_started = trio.current_time()


async def _count(response: Response) -> Response:
    started = getattr(g, "hm_started", None)
    if started is not None:
        route = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
        services().manager.telemetry.observe_request(
            request.method, route, response.status_code, trio.current_time() - started
        )
    return response


def install_request_metrics(app: QuartTrio) -> None:
    app.before_request(_start_clock)
    app.after_request(_count)
