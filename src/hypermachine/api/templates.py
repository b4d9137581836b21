"""``POST /api/v1/vms`` with ``from_snapshot``: the same route as ``create_vm``, another
operation (``create_vm_from_snapshot``, docs/snapshots.md). The view picks the
operation by the body and dispatches it like every other route."""

from __future__ import annotations

from quart import Response, request

from ..operations import Operation
from ..security.caller import current_caller
from .requests import read_json_object
from .rest import View, dispatcher, render

__all__ = ["create_view"]


def create_view(create: Operation, generic: View) -> View:
    """``create_vm``'s view, handing a body with ``from_snapshot`` to the template
    operation (the body is read once: Quart keeps it for the generic view)."""

    async def view() -> Response:
        if b'"from_snapshot"' in await request.get_data(as_text=False):
            body = await read_json_object()
            if "from_snapshot" in body:
                base = request.host_url.rstrip("/")
                result = await dispatcher().call(
                    "create_vm_from_snapshot", current_caller(), body, base_url=base
                )
                assert create.http is not None
                return render(result, create.http)
        response: Response = await generic()
        return response

    view.__name__ = create.name
    return view
