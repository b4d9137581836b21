"""``GET /api/v1/host/devices``: PCI devices, IOMMU groups and vGPU types of this host."""

from __future__ import annotations

from quart import Blueprint

from .services import services

__all__ = ["blueprint"]

blueprint = Blueprint("host_devices", __name__)


@blueprint.get("")
async def host_devices() -> dict[str, object]:
    devices = await services().manager.host_devices()
    return devices.model_dump(mode="json")
