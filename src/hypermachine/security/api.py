"""``/api/v1/keys`` and ``/api/v1/audit``: admin-only (the guard enforces it)."""

from __future__ import annotations

from quart import Blueprint, Response, current_app

from ..api.requests import parse_body, query_int
from ..errors import HMError
from .http import security
from .models import AuditPage, CreateKeyRequest, KeyList

__all__ = ["blueprint"]

blueprint = Blueprint("security", __name__)

_MAX_PAGE = 500


def _json(text: str, status: int = 200) -> Response:
    return current_app.response_class(text, status=status, mimetype="application/json")


@blueprint.get("/api/v1/keys")
async def list_keys() -> Response:
    return _json(KeyList(keys=security().store.list_keys()).model_dump_json())


@blueprint.post("/api/v1/keys")
async def create_key() -> Response:
    body = await parse_body(CreateKeyRequest)
    guard = security()
    created = guard.store.create_key(
        name=body.name, tier=body.tier, admin=body.admin, tenant=body.tenant
    )
    guard.audit("create_key", created.id, "ok")
    response = _json(created.model_dump_json(), 201)
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.delete("/api/v1/keys/<key_id>")
async def revoke_key(key_id: str) -> tuple[str, int]:
    guard = security()
    try:
        guard.store.revoke_key(key_id)
    except HMError as err:
        guard.audit("revoke_key", key_id, err.code)
        raise
    guard.audit("revoke_key", key_id, "ok")
    return "", 204


@blueprint.get("/api/v1/audit")
async def audit() -> Response:
    limit = query_int("limit", default=100, low=1, high=_MAX_PAGE) or 100
    before = query_int("cursor", default=None, low=1, high=2**62)
    entries, cursor = security().store.audit_page(limit=limit, before=before)
    return _json(AuditPage(entries=entries, next_cursor=cursor).model_dump_json())
