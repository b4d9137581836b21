"""A keyed server for security tests: real services with ``auth = "keys"`` and keys of
three callers (two tenants on the free tier and an admin)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from hypermachine.api import Services, create_app
from hypermachine.server import open_services
from support import make_settings, qemu_pids_for, remove_all_vms


@dataclass
class Keyed:
    services: Services
    client: Any
    alice: str
    bob: str
    admin: str

    def headers(self, key: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", **extra}

    async def call(
        self, method: str, path: str, key: str | None, **kwargs: Any
    ) -> tuple[int, Any, Any]:
        headers = {**(self.headers(key) if key else {}), **kwargs.pop("headers", {})}
        response = await self.client.open(path, method=method, headers=headers, **kwargs)
        data = await response.get_data()
        body = (await response.get_json()) if data and response.is_json else data
        return response.status_code, body, response.headers


@asynccontextmanager
async def keyed_server(
    data_dir: Path, compile_cache: Path, **overrides: object
) -> AsyncIterator[Keyed]:
    """Services in keyed mode; every VM is force-deleted afterwards and no QEMU survives."""
    settings = make_settings(data_dir, compile_cache, auth="keys", **overrides)
    async with open_services(settings) as svc:
        store = svc.security.store
        keys = {
            "alice": store.create_key(name="alice", tier="free", admin=False).key,
            "bob": store.create_key(name="bob", tier="free", admin=False).key,
            "admin": store.create_key(name="ops", tier="enterprise", admin=True).key,
        }
        try:
            yield Keyed(services=svc, client=create_app(svc).test_client(), **keys)
        finally:
            with trio.CancelScope(shield=True), trio.fail_after(60):
                uuids = await remove_all_vms(svc)
    assert qemu_pids_for(uuids) == [], "a QEMU process outlived its test"


def assert_error(body: Any, code: str) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
