"""An etcd v3 client over its JSON gateway (etcd 3.4: ``/v3/kv/*``, ``/v3/lease/*``).

The gateway speaks the gRPC API's messages as JSON: keys and values base64, 64-bit
numbers as strings. Requests go to one member; a member that cannot be reached is
skipped for the next, so any live member of the quorum serves. Errors are one
:class:`EtcdUnavailable` (no member answered) or :class:`EtcdError` (a member refused).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

__all__ = ["Etcd", "EtcdError", "EtcdUnavailable", "KeyValue", "LeaseLost"]


class EtcdError(Exception):
    """etcd answered, but not with success."""


class EtcdUnavailable(EtcdError):
    """No member of the cluster could be reached within the budget."""


class LeaseLost(EtcdError):
    """The lease has expired (or was revoked): what it held is gone."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def _prefix_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix`` (etcd's range_end)."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return _b64(b"\0")
    raw[-1] += 1
    return _b64(bytes(raw))


def _kv(doc: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(doc["key"]).decode(),
        value=base64.b64decode(doc.get("value", "")),
        create_revision=int(doc.get("create_revision", 0)),
        mod_revision=int(doc.get("mod_revision", 0)),
        lease=int(doc.get("lease", 0)),
    )


class Etcd:
    """A client of one etcd cluster (its members' client URLs)."""

    def __init__(self, urls: Sequence[str], *, timeout_s: float) -> None:
        if not urls:
            raise ValueError("etcd needs at least one member URL")
        self._urls = [url.rstrip("/") for url in urls]
        self._current = 0
        self._http = httpx.AsyncClient(timeout=timeout_s)

    async def __aenter__(self) -> Etcd:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to a member, trying each once, starting with the last good one.

        Raises:
            EtcdUnavailable: none could be reached. EtcdError: one refused.
        """
        failures = []
        for step in range(len(self._urls)):
            index = (self._current + step) % len(self._urls)
            try:
                answer = await self._http.post(f"{self._urls[index]}{path}", json=body)
            except httpx.TransportError as err:
                failures.append(f"{self._urls[index]}: {err!r}")
                continue
            self._current = index
            try:
                doc = answer.json()
            except ValueError as err:
                raise EtcdError(f"etcd answered {path} with no JSON") from err
            if answer.status_code != 200 or "error" in doc:
                raise EtcdError(f"etcd refused {path}: {doc.get('message') or answer.text}")
            return doc if isinstance(doc, dict) else {}
        raise EtcdUnavailable("no etcd member answered: " + "; ".join(failures))

    # -- keys --------------------------------------------------------------------

    async def put(self, key: str, value: str | bytes, *, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        await self._call("/v3/kv/put", body)

    async def get(self, key: str) -> KeyValue | None:
        doc = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = doc.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        doc = await self._call(
            "/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)}
        )
        return [_kv(kv) for kv in doc.get("kvs", [])]

    async def any_under(self, prefix: str) -> bool:
        """Whether any key starts with ``prefix`` (one key read at most, no values)."""
        body = {"key": _b64(prefix), "range_end": _prefix_end(prefix), "limit": "1",
                "keys_only": True}  # fmt: skip
        return bool((await self._call("/v3/kv/range", body)).get("kvs"))

    async def guarded_write(
        self,
        guard: str,
        prefix: str,
        plan: Callable[[list[KeyValue]], list[tuple[str, str, int]] | None],
        *,
        attempts: int = 8,
    ) -> bool | None:
        """Read the keys under ``prefix`` and write what ``plan`` makes of them (key,
        value, lease; they should rewrite ``guard``) in one transaction that holds only
        if ``guard`` did not change since the read; read again when another writer came
        between. None: ``plan`` wrote nothing; False: it kept changing.

        Raises:
            EtcdError: etcd refused or could not be reached; what ``plan`` raises.
        """
        for _ in range(attempts):
            seen = await self.get(guard)
            puts = plan(await self.get_prefix(prefix))
            if puts is None:
                return None
            if await self.put_if_unchanged(guard, seen.mod_revision if seen else 0, puts):
                return True
        return False

    async def delete(self, key: str) -> None:
        await self._call("/v3/kv/deleterange", {"key": _b64(key)})

    async def create(self, key: str, value: str | bytes, *, lease: int = 0) -> bool:
        """Write ``key`` only if it does not exist (one transaction); False if it did."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        doc = await self._call(
            "/v3/kv/txn",
            {
                "compare": [
                    {
                        "key": _b64(key),
                        "target": "CREATE",
                        "result": "EQUAL",
                        "create_revision": "0",
                    }
                ],
                "success": [{"request_put": put}],
            },
        )
        return bool(doc.get("succeeded", False))

    async def _if_holds(self, holds: tuple[str, str | bytes], request: dict[str, Any]) -> bool:
        """Run one request only if the key ``holds[0]`` holds ``holds[1]`` (one
        transaction); False if it did not (or does not exist)."""
        compare = {"key": _b64(holds[0]), "target": "VALUE", "result": "EQUAL"}
        doc = await self._call(
            "/v3/kv/txn",
            {"compare": [{**compare, "value": _b64(holds[1])}], "success": [request]},
        )
        return bool(doc.get("succeeded", False))

    async def put_if(self, key: str, value: str | bytes, *, holds: tuple[str, str]) -> bool:
        """Write ``key`` only if the key ``holds[0]`` holds ``holds[1]`` (one
        transaction); False if it did not. ``holds[0]`` may be ``key`` itself: a
        compare-and-swap."""
        return await self._if_holds(
            holds, {"request_put": {"key": _b64(key), "value": _b64(value)}}
        )

    async def put_if_unchanged(
        self, guard: str, mod_revision: int, puts: list[tuple[str, str, int]]
    ) -> bool:
        """Write ``puts`` (key, value, lease) only if the key ``guard`` was last changed
        at ``mod_revision`` (0: it does not exist), in one transaction; False if not."""
        compare = {
            "key": _b64(guard),
            "target": "MOD",
            "result": "EQUAL",
            "mod_revision": str(mod_revision),
        }
        success = []
        for key, value, lease in puts:
            put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
            if lease:
                put["lease"] = str(lease)
            success.append({"request_put": put})
        doc = await self._call("/v3/kv/txn", {"compare": [compare], "success": success})
        return bool(doc.get("succeeded", False))

    async def delete_if(self, key: str, value: str | bytes) -> bool:
        """Delete ``key`` only if it holds ``value`` (one transaction); False if not."""
        return await self.delete_where(key, holds=(key, value))

    async def delete_where(self, key: str, *, holds: tuple[str, str | bytes]) -> bool:
        """Delete ``key`` only if the key ``holds[0]`` holds ``holds[1]`` (one
        transaction); False if not."""
        return await self._if_holds(holds, {"request_delete_range": {"key": _b64(key)}})

    # -- leases ------------------------------------------------------------------

    async def grant(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds; returns its id."""
        doc = await self._call("/v3/lease/grant", {"TTL": str(ttl_s)})
        return int(doc["ID"])

    async def keep_alive(self, lease: int) -> int:
        """Renew ``lease``; returns the seconds it now has.

        Raises:
            LeaseLost: it has expired or was revoked.
        """
        doc = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        ttl = int(doc.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise LeaseLost(f"lease {lease:x} has expired")
        return ttl

    async def revoke(self, lease: int) -> None:
        """End ``lease`` now: every key it holds is deleted."""
        await self._call("/v3/lease/revoke", {"ID": str(lease)})
