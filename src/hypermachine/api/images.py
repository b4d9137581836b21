"""``GET /api/v1/images``: the image catalogue."""

from __future__ import annotations

from quart import Blueprint

from .services import services

__all__ = ["blueprint"]

blueprint = Blueprint("images", __name__)


@blueprint.get("")
async def list_images() -> dict[str, object]:
    return {"images": [image.to_dict() for image in services().catalogue.list()]}
