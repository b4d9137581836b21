"""``/api/v1/vms/{id}/snapshots``, ``…/fork``, ``…/hibernate`` and ``POST /api/v1/vms``
with ``from_snapshot``: thin wrappers over the manager's snapshot operations
(docs/snapshots.md)."""

from __future__ import annotations

import json

from quart import Blueprint, Response, current_app, request

from ..models import (
    CreateFromSnapshotRequest,
    ForkRequest,
    ForkResult,
    LifecycleRequest,
    RestoreRequest,
    SnapshotList,
    SnapshotRequest,
    VmState,
)
from .requests import parse_body
from .services import services

__all__ = ["blueprint", "create_from_snapshot", "wants_snapshot"]

blueprint = Blueprint("snapshots", __name__)


def _json(body: str, status: int = 200) -> Response:
    return current_app.response_class(body, status=status, mimetype="application/json")


@blueprint.post("/<vm_id>/snapshots")
async def take_snapshot(vm_id: str) -> Response:
    body = await parse_body(SnapshotRequest)
    snapshot = await services().manager.snapshot(vm_id, body)
    response = _json(snapshot.model_dump_json(), 201 if snapshot.complete else 202)
    response.headers["Location"] = f"/api/v1/vms/{vm_id}/snapshots/{body.name}"
    return response


@blueprint.get("/<vm_id>/snapshots")
async def list_snapshots(vm_id: str) -> Response:
    listed = SnapshotList(snapshots=list(services().manager.list_snapshots(vm_id)))
    return _json(listed.model_dump_json())


@blueprint.get("/<vm_id>/snapshots/<name>")
async def get_snapshot(vm_id: str, name: str) -> Response:
    return _json(services().manager.get_snapshot(vm_id, name).model_dump_json())


@blueprint.delete("/<vm_id>/snapshots/<name>")
async def delete_snapshot(vm_id: str, name: str) -> tuple[str, int]:
    await services().manager.delete_snapshot(vm_id, name)
    return "", 204


@blueprint.post("/<vm_id>/snapshots/<name>/restore")
async def restore_snapshot(vm_id: str, name: str) -> Response:
    body = await parse_body(RestoreRequest, allow_empty=True)
    vm = await services().manager.restore(vm_id, name, wait=body.wait)
    return _json(vm.model_dump_json(), 202 if vm.state is VmState.RESTORING else 200)


@blueprint.post("/<vm_id>/fork")
async def fork_vm(vm_id: str) -> Response:
    body = await parse_body(ForkRequest)
    children = await services().manager.fork(vm_id, body)
    return _json(ForkResult(vms=list(children)).model_dump_json(), 201)


@blueprint.post("/<vm_id>/hibernate")
async def hibernate_vm(vm_id: str) -> Response:
    await parse_body(LifecycleRequest, allow_empty=True)
    return _json((await services().manager.hibernate(vm_id)).model_dump_json())


async def wants_snapshot() -> bool:
    """Whether a ``POST /api/v1/vms`` body asks for a VM from a snapshot (a body that
    does not parse is left to the ordinary create path to refuse)."""
    raw = await request.get_data(as_text=False)
    if b'"from_snapshot"' not in raw:
        return False
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and "from_snapshot" in body


async def create_from_snapshot() -> Response:
    body = await parse_body(CreateFromSnapshotRequest)
    manager = services().manager
    vm = await manager.create_from_snapshot(body)
    if body.wait and body.start:
        vm = await manager.wait_for(vm.id, {VmState.RUNNING, VmState.PAUSED}, 60.0)
    response = _json(vm.model_dump_json(), 201)
    response.headers["Location"] = f"/api/v1/vms/{vm.id}"
    return response
