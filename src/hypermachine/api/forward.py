"""The REST face of forwarding (cluster/forwarding.py): a request for a VM another
node owns is answered by that node, and a new VM is created where placement puts it.
Registered after the security layer, so the caller is authenticated here first."""

from __future__ import annotations

import json

from pydantic import ValidationError
from quart import Response, request
from quart_trio import QuartTrio

from ..cluster.forwarding import Forwarder, is_forwarded, is_vm_read, vm_of
from ..models import CreateVmRequest
from ..security.http import raw_body, raw_target

__all__ = ["install_forwarding"]

# What of the owner's answer reaches the caller.
_ANSWER_HEADERS = ("content-type", "location", "retry-after")


async def _placement(forwarder: Forwarder) -> str | None:
    """Where a create goes; None (answered here) for one this node takes, and for a body
    the create operation itself will refuse or that is a template (``from_snapshot``)."""
    try:
        create = CreateVmRequest.model_validate(json.loads(await raw_body()))
    except (ValueError, ValidationError):
        return None
    return await forwarder.placement_url(create)


def install_forwarding(app: QuartTrio, forwarder: Forwarder) -> None:
    async def forward() -> Response | None:
        if is_forwarded(dict(request.headers)):
            return None  # forwarded already: answered here
        vm_id = vm_of(request.path)
        if vm_id is not None:
            viewable = is_vm_read(request.method, request.path)
            url = await forwarder.owner_url(vm_id, viewable=viewable)
        elif request.method == "POST" and request.path == "/api/v1/vms":
            url = await _placement(forwarder)
        else:
            return None
        if url is None:
            return None
        body, headers = await raw_body(), dict(request.headers)
        answer = await forwarder.send(url, request.method, raw_target(), body, headers)
        kept = {k: v for k, v in answer.headers.items() if k.lower() in _ANSWER_HEADERS}
        return Response(answer.content, status=answer.status_code, headers=kept)

    app.before_request(forward)
