"""``GET /api/v1/host``: what this host can do, so a client knows what to ask for."""

from __future__ import annotations

from quart import Blueprint

from .requests import query_bool
from .services import services

__all__ = ["blueprint"]

blueprint = Blueprint("host", __name__)


@blueprint.get("")
async def host_capabilities() -> dict[str, object]:
    """The capability map probed at start-up; ``?refresh=true`` probes again."""
    caps = await services().manager.host_capabilities(refresh=query_bool("refresh"))
    return caps.model_dump(mode="json")
