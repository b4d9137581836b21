"""The admin operations of the security layer: API keys and the audit log."""

from __future__ import annotations

from ..errors import KeyNotFound
from ..operations.declare import Access, Answer, Context, HttpRoute, Operation, QueryParam
from ..operations.inputs import AuditPageInput, KeyIdInput, NoInput
from .models import AuditPage, CreatedKey, CreateKeyRequest, KeyList

__all__ = ["security_operations"]


async def _list_keys(ctx: Context, _args: NoInput) -> KeyList:
    return KeyList(keys=await ctx.services.security.keys.list_keys())


async def _create_key(ctx: Context, args: CreateKeyRequest) -> Answer:
    created: CreatedKey = await ctx.services.security.keys.create_key(
        name=args.name, tier=args.tier, admin=args.admin, tenant=args.tenant
    )
    return Answer(created, status=201, headers={"Cache-Control": "no-store"}, target=created.id)


async def _revoke_key(ctx: Context, args: KeyIdInput) -> Answer:
    await ctx.services.security.keys.revoke_key(args.key_id)
    return Answer({"revoked": True, "key_id": args.key_id}, status=204)


async def _audit_page(ctx: Context, args: AuditPageInput) -> AuditPage:
    store = ctx.services.security.store
    entries, cursor = store.audit_page(limit=args.limit, before=args.cursor)
    return AuditPage(entries=entries, next_cursor=cursor)


def _admin(**kw: object) -> Operation:
    return Operation(access=Access.ADMIN, tool=False, tag="admin", resource="ApiKey", **kw)  # type: ignore[arg-type]


def security_operations() -> list[Operation]:
    """Keys and audit: admin only, never agent tools (a created key's secret is shown once)."""
    return [
        _admin(
            name="list_keys",
            title="List API keys",
            summary="Every API key (never the keys themselves).",
            returns="{keys: [...]}.",
            input=NoInput,
            handler=_list_keys,
            result=KeyList,
            http=HttpRoute("GET", "/api/v1/keys"),
        ),
        _admin(
            name="create_key",
            title="Create an API key",
            summary="Create an API key; the answer shows it this once.",
            returns="The key's record and its secret.",
            input=CreateKeyRequest,
            handler=_create_key,
            result=CreatedKey,
            mutates=True,
            audit_details=lambda a: {"name": a.name, "tier": a.tier, "admin": a.admin},
            http=HttpRoute("POST", "/api/v1/keys", status=201, body=CreateKeyRequest),
        ),
        _admin(
            name="revoke_key",
            title="Revoke an API key",
            summary="Revoke an API key at once.",
            returns="Nothing (204).",
            input=KeyIdInput,
            handler=_revoke_key,
            errors=(KeyNotFound,),
            mutates=True,
            http=HttpRoute("DELETE", "/api/v1/keys/{key_id}", status=204),
        ),
        _admin(
            name="get_audit",
            title="The audit log",
            summary="The audit log of mutating calls and denials, newest first.",
            returns="{entries: [...], next_cursor}.",
            input=AuditPageInput,
            handler=_audit_page,
            result=AuditPage,
            http=HttpRoute(
                "GET",
                "/api/v1/audit",
                query=(
                    QueryParam("limit", description="Page size (default 100)."),
                    QueryParam("cursor", description="next_cursor of the previous page."),
                ),
            ),
        ),
    ]
