"""``GET /health``: is the server up, which version, since when, on what accelerator."""

from __future__ import annotations

import trio
from quart import Blueprint

from .. import __version__
from .services import services

__all__ = ["blueprint"]

blueprint = Blueprint("health", __name__)


@blueprint.get("/health")
async def health() -> dict[str, object]:
    svc = services()
    host = svc.manager.host
    return {
        "status": "healthy",
        "version": __version__,
        "uptime_seconds": round(trio.current_time() - svc.started_at, 3),
        "accelerator": host.accelerator,
        "accelerator_reason": host.accelerator_reason,
        "qemu_version": host.qemu_version,
        "live_vms": svc.manager.live_machines(),
        "auth": svc.security.mode() if svc.security is not None else "open",
        "qemu_user": svc.manager.qemu_identity.name if svc.manager.qemu_identity else None,
    }
