"""The REST face of forwarding (cluster/forwarding.py): a request for a VM another
node owns is answered by that node. Registered after the security layer, so the
caller is authenticated here first."""

from __future__ import annotations

from quart import Response, request
from quart_trio import QuartTrio

from ..cluster.forwarding import Forwarder, is_forwarded, vm_of
from ..security.http import raw_body, raw_target

__all__ = ["install_forwarding"]

# What of the owner's answer reaches the caller.
_ANSWER_HEADERS = ("content-type", "location", "retry-after")


def install_forwarding(app: QuartTrio, forwarder: Forwarder) -> None:
    async def forward() -> Response | None:
        vm_id = vm_of(request.path)
        if vm_id is None or is_forwarded(dict(request.headers)):
            return None  # not about a VM, or forwarded already: answered here
        url = await forwarder.owner_url(vm_id)
        if url is None:
            return None
        body = await raw_body()
        answer = await forwarder.send(
            url, request.method, raw_target(), body, dict(request.headers)
        )
        kept = {k: v for k, v in answer.headers.items() if k.lower() in _ANSWER_HEADERS}
        return Response(answer.content, status=answer.status_code, headers=kept)

    app.before_request(forward)
