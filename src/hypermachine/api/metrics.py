"""``GET /metrics`` (Prometheus exposition format) and the per-request counters."""

from __future__ import annotations

import trio
from quart import Blueprint, Response, g, request

from ..telemetry import CONTENT_TYPE
from .services import services

__all__ = ["blueprint"]

blueprint = Blueprint("metrics", __name__)


@blueprint.before_app_request
async def _start_clock() -> None:
    g.hm_started = trio.current_time()


@blueprint.after_app_request
async def _count(response: Response) -> Response:
    started = getattr(g, "hm_started", None)
    if started is not None:
        route = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
        services().manager.telemetry.observe_request(
            request.method, route, response.status_code, trio.current_time() - started
        )
    return response


@blueprint.get("/metrics")
async def metrics() -> Response:
    manager = services().manager
    body = await manager.telemetry.render(manager)
    return Response(body, content_type=CONTENT_TYPE)
