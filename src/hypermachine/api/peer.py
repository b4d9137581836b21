"""The node-to-node routes of a live migration (``/cluster/v1/migrations``): the
destination's side, called by the source node (``cluster.peers``).

Only the server of another node may call them: a request signed with the cluster
secret as the server itself (``SYSTEM``), which no API key, open mode or browser can
be. Anyone else gets 403, whatever the route.
"""

from __future__ import annotations

import re
from typing import Any

from quart import Response, current_app, jsonify, request
from quart_trio import QuartTrio

from ..errors import BadRequest, Forbidden
from ..hypervisor.manager import Manager
from ..models import IncomingOffer
from ..security.caller import SYSTEM, current_caller
from ..security.http import raw_body

__all__ = ["install_peer_routes"]

_PREFIX = "/cluster/v1/migrations"
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+/-]{0,511}$")


def _manager() -> Manager:
    if current_caller() is not SYSTEM:
        raise Forbidden("a node-to-node route: only another node of the cluster may call it")
    found: Manager = current_app.extensions["hypermachine"].manager
    return found


async def _offer(token: str) -> Response:
    manager = _manager()
    offer = IncomingOffer.model_validate_json(await raw_body())
    if offer.token != token:
        raise BadRequest("the offer's token is not the route's", token=token)
    await manager.incoming.offer(offer)
    return Response("", status=204)


async def _file(token: str, name: str) -> Response:
    manager = _manager()
    if not _FILE_NAME.fullmatch(name):
        raise BadRequest("not a path inside a VM folder", name=name[:80])
    offset = request.args.get("offset", "")
    if not offset.isdigit():
        raise BadRequest("offset must be a whole number of bytes", offset=offset[:40])
    await manager.incoming.receive(token, name, int(offset), await raw_body())
    return Response("", status=204)


async def _open(token: str) -> Any:
    ports = await _manager().incoming.open(token)
    return jsonify(ports.model_dump())


async def _commit(token: str) -> Any:
    vm = await _manager().incoming.commit(token)
    return current_app.response_class(vm.model_dump_json(), mimetype="application/json")


async def _abort(token: str) -> Response:
    await _manager().incoming.abort(token)
    return Response("", status=204)


def install_peer_routes(app: QuartTrio) -> None:
    """Add the routes (a node with a cluster secret only)."""
    tokened = f"{_PREFIX}/<token>"
    app.add_url_rule(tokened, "peer_offer", _offer, methods=["POST"])
    app.add_url_rule(tokened, "peer_abort", _abort, methods=["DELETE"])
    app.add_url_rule(f"{tokened}/files/<path:name>", "peer_file", _file, methods=["PUT"])
    app.add_url_rule(f"{tokened}/open", "peer_open", _open, methods=["POST"])
    app.add_url_rule(f"{tokened}/commit", "peer_commit", _commit, methods=["POST"])
