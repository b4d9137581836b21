"""``POST /api/v1/vms/{id}/script``: run a Rhai script with ``vm`` bound to that VM."""

from __future__ import annotations

from quart import Blueprint

from ..models import ScriptRequest
from .requests import parse_body
from .services import services

__all__ = ["blueprint"]

blueprint = Blueprint("scripts", __name__)


@blueprint.post("/api/v1/vms/<vm_id>/script")
async def run_vm_script(vm_id: str) -> dict[str, object]:
    request = await parse_body(ScriptRequest)
    response = await services().scripts.run(request, vm_id=vm_id)
    return response.model_dump(mode="json")
