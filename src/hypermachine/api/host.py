"""``GET /api/v1/host``: what this host can do, so a client knows what to ask for."""

from __future__ import annotations

from quart import Blueprint

from ..errors import HypervisorError
from .requests import query_bool
from .services import services

__all__ = ["blueprint"]

blueprint = Blueprint("host", __name__)


@blueprint.get("")
async def host_capabilities() -> dict[str, object]:
    """The capability map probed at start-up; ``?refresh=true`` probes again."""
    manager = services().manager
    caps = await manager.refresh_host() if query_bool("refresh") else manager.host.capabilities
    if caps is None:
        raise HypervisorError("the host's capabilities have not been probed yet")
    return caps.model_dump(mode="json")
