"""``/api/v1/vms/{id}/exec`` and ``/files``: commands and files in the guest (qemu-ga)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from quart import Blueprint, Response, jsonify, request

from ..errors import GuestFileTooLarge, ValidationFailed
from ..models import ExecRequest, ExecResult, FileReadRequest
from .requests import parse_body, query_float
from .services import services
from .sse import SseMessage, sse_response

__all__ = ["blueprint"]

blueprint = Blueprint("guest", __name__)


def _wait_agent() -> float:
    """``?wait_agent=SECONDS``: how long to wait for the guest agent (default: not at all)."""
    if request.args.get("wait_agent") in (None, "0"):
        return 0.0
    limit = services().settings.wait_timeout_max_s
    return query_float("wait_agent", default=0.0, low=0, high=limit)


def _result(result: ExecResult, status: int = 200) -> Response:
    response = jsonify(result.model_dump(mode="json"))
    response.status_code = status
    return response


@blueprint.post("/<vm_id>/exec")
async def exec_command(vm_id: str) -> Response:
    body = await parse_body(ExecRequest)
    result = await services().manager.guest.exec(vm_id, body, wait_agent_s=_wait_agent())
    if body.wait:
        return _result(result)
    response = _result(result, 202)
    response.headers["Location"] = f"/api/v1/vms/{vm_id}/exec/{result.exec_id}"
    return response


@blueprint.get("/<vm_id>/exec")
async def list_execs(vm_id: str) -> dict[str, object]:
    results = services().manager.guest.exec_list(vm_id)
    return {"execs": [r.model_dump(mode="json") for r in results]}


@blueprint.get("/<vm_id>/exec/<exec_id>")
async def exec_status(vm_id: str, exec_id: str) -> Response:
    return _result(services().manager.guest.exec_status(vm_id, exec_id))


@blueprint.get("/<vm_id>/exec/<exec_id>/stream")
async def exec_stream(vm_id: str, exec_id: str) -> Response:
    svc = services()
    guest = svc.manager.guest
    guest.exec_status(vm_id, exec_id)  # VmNotFound / ExecNotFound before the stream opens
    items = guest.exec_stream(vm_id, exec_id, idle_s=svc.settings.sse_keepalive_s)

    async def messages() -> AsyncIterator[SseMessage]:
        async for item in items:
            if item is None:
                yield None
            elif isinstance(item, ExecResult):
                yield "exit", item.model_dump(mode="json"), None
                return
            else:
                yield item.stream, item.model_dump(mode="json", exclude_none=True), None

    return sse_response(messages())


def _path() -> str:
    raw = request.args.get("path")
    if raw is None:
        raise ValidationFailed("give the guest path: ?path=/etc/hostname")
    return FileReadRequest(path=raw).path


@blueprint.get("/<vm_id>/files")
async def read_file(vm_id: str) -> Response:
    reader = await services().manager.guest.open_file(
        vm_id, FileReadRequest(path=_path()), wait_agent_s=_wait_agent()
    )
    response = Response(reader.chunks(), mimetype="application/octet-stream")
    response.headers["X-Guest-File-Size"] = str(reader.size)
    response.timeout = None
    return response


@blueprint.put("/<vm_id>/files")
async def write_file(vm_id: str) -> dict[str, object]:
    path = _path()
    limit = services().settings.file_max_bytes
    if (request.content_length or 0) > limit:
        raise GuestFileTooLarge(f"the file is larger than the limit of {limit} bytes")
    data = bytearray()
    async for chunk in request.body:
        data += chunk
        if len(data) > limit:
            raise GuestFileTooLarge(f"the file is larger than the limit of {limit} bytes")
    written = await services().manager.guest.write_bytes(
        vm_id, path, bytes(data), wait_agent_s=_wait_agent()
    )
    return written.model_dump(mode="json")
