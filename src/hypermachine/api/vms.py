"""``/api/v1/vms``: create, list, inspect, drive and delete VMs."""

from __future__ import annotations

import re

from pydantic import BaseModel
from quart import Blueprint, Response, current_app, request

from ..errors import ValidationFailed
from ..models import CreateVmRequest, LifecycleRequest, StopRequest, Vm, VmState
from ..store import VmQuery
from .requests import parse_body, query_bool, query_float, query_int
from .services import services
from .snapshots import create_from_snapshot, wants_snapshot

__all__ = ["blueprint"]

blueprint = Blueprint("vms", __name__)

_DEFAULT_WAIT_S = 60.0
_MAX_PAGE = 500
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def _json(model: BaseModel, status: int = 200) -> Response:
    """Serialize in pydantic's core (much faster than re-encoding a dict)."""
    return current_app.response_class(
        model.model_dump_json(), status=status, mimetype="application/json"
    )


def _vm_response(vm: Vm, status: int = 200) -> Response:
    return _json(vm, status)


def _states(raw: list[str]) -> list[VmState]:
    names = [part for item in raw for part in item.split(",") if part]
    try:
        return [VmState(name) for name in names]
    except ValueError as err:
        raise ValidationFailed(
            f"unknown state in {names}", allowed=[s.value for s in VmState]
        ) from err


def _labels(raw: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationFailed("label filters look like label=key=value", value=item)
        labels[key] = value
    return labels


@blueprint.get("")
async def list_vms() -> Response:
    limit = query_int("limit", default=100, low=1, high=_MAX_PAGE) or 100
    query = VmQuery(
        states=tuple(_states(request.args.getlist("state"))),
        name=request.args.get("name") or None,
        labels=_labels(request.args.getlist("label")),
        limit=limit,
        cursor=request.args.get("cursor") or None,
    )
    page = services().manager.list_json(query)
    return current_app.response_class(page, mimetype="application/json")


@blueprint.post("")
async def create_vm() -> Response:
    if await wants_snapshot():
        return await create_from_snapshot()
    body = await parse_body(CreateVmRequest)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ValidationFailed("Idempotency-Key must be 1-255 printable ASCII characters")
    manager = services().manager
    created = await manager.create(body, idempotency_key=key)
    vm = created.vm
    if body.wait and not created.replayed:
        target = VmState.RUNNING if body.start else VmState.STOPPED
        vm = await manager.wait_for(vm.id, {target}, _DEFAULT_WAIT_S)
    response = _vm_response(vm, 201)
    response.headers["Location"] = f"/api/v1/vms/{vm.id}"
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@blueprint.get("/<vm_id>")
async def get_vm(vm_id: str) -> Response:
    return _vm_response(services().manager.get(vm_id))


@blueprint.delete("/<vm_id>")
async def delete_vm(vm_id: str) -> tuple[str, int]:
    await services().manager.delete(vm_id, force=query_bool("force"))
    return "", 204


async def _maybe_wait(
    vm: Vm, wants_wait: bool, timeout_s: float | None, target: VmState
) -> Response:
    if wants_wait or query_bool("wait"):
        timeout = timeout_s or query_float("timeout", default=_DEFAULT_WAIT_S, low=0, high=3600)
        return _vm_response(await services().manager.wait_for(vm.id, {target}, timeout))
    return _vm_response(vm, 200 if vm.state is target else 202)


@blueprint.post("/<vm_id>/start")
async def start_vm(vm_id: str) -> Response:
    body = await parse_body(LifecycleRequest, allow_empty=True)
    vm = await services().manager.start(vm_id)
    return await _maybe_wait(vm, body.wait, body.timeout_s, VmState.RUNNING)


@blueprint.post("/<vm_id>/stop")
async def stop_vm(vm_id: str) -> Response:
    body = await parse_body(StopRequest, allow_empty=True)
    force = body.force or query_bool("force")
    vm = await services().manager.stop(vm_id, force=force, timeout_s=body.timeout_s)
    # The wait covers the ACPI grace period too, so give it room beyond that.
    wait_s = (body.timeout_s or services().settings.stop_timeout_s) + _DEFAULT_WAIT_S
    return await _maybe_wait(vm, body.wait, wait_s if body.wait else None, VmState.STOPPED)


@blueprint.post("/<vm_id>/pause")
async def pause_vm(vm_id: str) -> Response:
    await parse_body(LifecycleRequest, allow_empty=True)
    return _vm_response(await services().manager.pause(vm_id))


@blueprint.post("/<vm_id>/resume")
async def resume_vm(vm_id: str) -> Response:
    await parse_body(LifecycleRequest, allow_empty=True)
    return _vm_response(await services().manager.resume(vm_id))


@blueprint.post("/<vm_id>/reboot")
async def reboot_vm(vm_id: str) -> Response:
    await parse_body(LifecycleRequest, allow_empty=True)
    return _vm_response(await services().manager.reboot(vm_id))


@blueprint.get("/<vm_id>/wait")
async def wait_vm(vm_id: str) -> Response:
    states = _states(request.args.getlist("state"))
    if not states:
        raise ValidationFailed("give the state to wait for: ?state=running")
    timeout = query_float("timeout", default=_DEFAULT_WAIT_S, low=0, high=3600)
    return _vm_response(await services().manager.wait_for(vm_id, set(states), timeout))


@blueprint.get("/<vm_id>/attestation")
async def vm_attestation(vm_id: str) -> dict[str, object]:
    return await services().manager.attestation(vm_id)


@blueprint.get("/<vm_id>/metrics")
async def vm_metrics(vm_id: str) -> dict[str, object]:
    metrics = await services().manager.metrics(vm_id)
    return metrics.model_dump(mode="json")
