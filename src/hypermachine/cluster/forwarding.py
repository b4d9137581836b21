"""Any node answers a call for a VM another node owns: it forwards the request there.

A request for ``/api/v1/vms/<id>…`` whose VM is not in this node's store, and whose
ownership key (etcd) names another node that is up, is sent on to that node's
advertised URL and its answer relayed as it streams (event streams and file
downloads included); a console websocket is relayed by ``api.forward``. The caller was authenticated
here; the owner checks the VM against that caller again (tenant, access, audit).

The node-to-node channel is authenticated with the cluster secret (the same file on
every node): the forwarded request names the forwarding node, a timestamp and the
caller, and carries an HMAC-SHA256 over those, the method, the target and the body's
hash. The owner accepts the asserted caller only with a valid signature no older than
:data:`MAX_AGE_S`, and each signature once. A request with the headers but no valid
signature is 401, and a forwarded request is never forwarded again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..config import ConfigError
from ..errors import ClusterUnavailable, Unauthorized
from ..models import CreateVmRequest, NodeState
from ..security.caller import ANONYMOUS, SYSTEM, TIERS, Caller, Tier, current_caller
from .etcd import Etcd, EtcdError
from .membership import Membership
from .ownership import owner_key
from .placement import place

__all__ = [
    "FORWARD_HEADERS",
    "MAX_AGE_S",
    "Forwarder",
    "NodeAuth",
    "is_forwarded",
    "is_vm_read",
    "read_secret",
    "unsigned",
    "vm_of",
]

MAX_AGE_S = 30.0
_MIN_SECRET_BYTES = 32
_BY, _AT, _CALLER, _SIGNATURE = (
    "X-HM-Forwarded-By",
    "X-HM-Forwarded-At",
    "X-HM-Forwarded-Caller",
    "X-HM-Forwarded-Signature",
)
FORWARD_HEADERS = (_BY, _AT, _CALLER, _SIGNATURE)
_VM_PATH = re.compile(r"^/api/v1/vms/(vm-[0-9a-f]{12})(/|$)")


def vm_of(path: str) -> str | None:
    """The VM id a request path is about (``/api/v1/vms/<id>…``), or None."""
    found = _VM_PATH.match(path)
    return found.group(1) if found else None


def is_vm_read(method: str, path: str) -> bool:
    """A ``GET`` of one VM itself, which the cluster's view answers when its node is down."""
    found = _VM_PATH.match(path)
    return method == "GET" and found is not None and found.end() >= len(path.rstrip("/"))


def read_secret(path: Path) -> bytes:
    """The cluster secret from its file (at least 32 bytes, surrounding blanks dropped).

    Raises:
        ConfigError: it cannot be read or is too short.
    """
    try:
        secret = path.read_bytes().strip()
    except OSError as err:
        raise ConfigError(f"cluster_secret_file {path}: {err.strerror}") from err
    if len(secret) < _MIN_SECRET_BYTES:
        raise ConfigError(f"cluster_secret_file {path}: at least {_MIN_SECRET_BYTES} bytes")
    return secret


def _caller_json(caller: Caller) -> str:
    doc = {"key_id": caller.key_id, "tenant": caller.tenant, "tier": caller.tier}
    return json.dumps({**doc, "admin": caller.admin}, sort_keys=True)


@dataclass
class NodeAuth:
    """Signing and checking forwarded requests with the cluster secret."""

    node: str
    secret: bytes
    _seen: dict[str, float] = field(default_factory=dict)

    def _mac(self, by: str, at: str, caller: str, method: str, target: str, body: bytes) -> str:
        digest = hashlib.sha256(body).hexdigest()
        message = "\n".join((by, at, caller, method.upper(), target, digest)).encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def headers(self, caller: Caller, method: str, target: str, body: bytes) -> dict[str, str]:
        """What a request forwarded as ``caller`` carries."""
        at, asserted = f"{time.time():.3f}", _caller_json(caller)
        signature = self._mac(self.node, at, asserted, method, target, body)
        return {_BY: self.node, _AT: at, _CALLER: asserted, _SIGNATURE: signature}

    def caller_of(
        self, headers: Mapping[str, str], method: str, target: str, body: bytes
    ) -> Caller | None:
        """The caller a forwarded request asserts; None for a request not forwarded.

        Raises:
            Unauthorized: forwarding headers without a valid, fresh, unused signature.
        """
        values = _forward_values(headers)
        if not any(values):
            return None
        by, at, asserted, signature = (value or "" for value in values)
        expected = self._mac(by, at, asserted, method, target, body)
        if not hmac.compare_digest(expected, signature):
            raise Unauthorized("a forwarded request without a valid cluster signature")
        now = time.time()
        try:
            fresh = abs(now - float(at)) <= MAX_AGE_S
        except ValueError:
            fresh = False
        self._seen = {sig: t for sig, t in self._seen.items() if now - t <= 2 * MAX_AGE_S}
        if not fresh or signature in self._seen:
            raise Unauthorized("a forwarded request that is stale or replayed")
        self._seen[signature] = now
        doc = json.loads(asserted)
        tier: Tier = next((t for t in TIERS if t == doc.get("tier")), "free")
        caller = Caller(
            key_id=doc.get("key_id"),
            tenant=str(doc.get("tenant", "")),
            tier=tier,
            admin=doc.get("admin") is True,
        )
        # The server's own callers are known by identity (no key, open mode).
        return next((known for known in (ANONYMOUS, SYSTEM) if known == caller), caller)


def _forward_values(headers: Mapping[str, str]) -> list[str | None]:
    """The forwarding headers' values, looked up whatever the case of their names."""
    lowered = {name.lower(): value for name, value in headers.items()}
    return [lowered.get(name.lower()) for name in FORWARD_HEADERS]


def is_forwarded(headers: Mapping[str, str]) -> bool:
    """Whether a request carries any forwarding header (valid or not)."""
    return any(_forward_values(headers))


def unsigned(headers: Mapping[str, str]) -> Unauthorized | None:
    """For a node without the cluster secret: refuse any request claiming to be forwarded."""
    if is_forwarded(headers):
        return Unauthorized("this node takes no forwarded requests (no cluster secret)")
    return None


class Forwarder:
    """Finds a VM's owner and sends it a request, signed (see the module's doc)."""

    def __init__(
        self,
        auth: NodeAuth,
        etcd: Etcd,
        membership: Membership,
        is_local: Callable[[str], bool],
        *,
        timeout_s: float,
    ) -> None:
        self.auth = auth
        self._etcd = etcd
        self._membership = membership
        self._is_local = is_local
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(timeout=timeout_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def owner_url(self, vm_id: str, *, viewable: bool = False) -> str | None:
        """The API URL of the node owning ``vm_id``; None when it is this node's (or
        nobody's: the request is then answered here, a 404 as usual), and with
        ``viewable`` (a read the cluster's view answers) when the owner is down.

        Raises:
            ClusterUnavailable: etcd cannot be asked, or the owner is down.
        """
        if self._is_local(vm_id):
            return None
        try:
            found = await self._etcd.get(owner_key(vm_id))
            owner = found.value.decode(errors="replace") if found is not None else None
            if owner is None or owner == self.auth.node:
                return None
            nodes = {node.name: node for node in await self._membership.nodes()}
        except EtcdError as err:
            raise ClusterUnavailable(f"the VM's owner cannot be found: {err}") from err
        node = nodes.get(owner)
        if node is None or node.state is not NodeState.UP:
            if viewable:
                return None
            raise ClusterUnavailable(f"VM {vm_id} is on node {owner!r}, which is down", node=owner)
        return node.url

    async def placement_url(self, request: CreateVmRequest) -> str | None:
        """The API URL of the node a new VM goes to; None when it is this one.

        Raises:
            NodeNotFound, InsufficientResources (placement.place), ClusterUnavailable.
        """
        try:
            nodes = await self._membership.nodes()
        except EtcdError as err:
            raise ClusterUnavailable(f"the cluster's nodes cannot be read: {err}") from err
        chosen = place(request, nodes)
        return None if chosen.name == self.auth.node else chosen.url

    async def send(
        self,
        url: str,
        method: str,
        target: bytes,
        body: bytes,
        headers: Mapping[str, str],
        *,
        caller: Caller | None = None,
    ) -> httpx.Response:
        """Send the request to the owner as ``caller`` (default: the current one); the
        answer comes back open, as it streams (read it, then ``aclose`` it): an event
        stream may stay quiet for as long as it likes.

        Raises:
            ClusterUnavailable: the owner did not answer.
        """
        asserted = caller if caller is not None else current_caller()
        signed = self.auth.headers(asserted, method, target.decode(), body)
        kept = {k: v for k, v in headers.items() if k.lower() in _KEPT_HEADERS}
        path, _, query = target.partition(b"?")
        base = httpx.URL(url)
        request = self._http.build_request(
            method,
            base.copy_with(raw_path=target if query else path),
            content=body,
            headers={**kept, **signed},
            timeout=httpx.Timeout(self._timeout_s, read=None),
        )
        try:
            return await self._http.send(request, stream=True)
        except httpx.TransportError as err:
            raise ClusterUnavailable(f"the VM's node at {url} did not answer: {err!r}") from err


# What a forwarded request keeps of the caller's: never its key (the owner trusts the
# signed caller instead), nor hop-by-hop headers.
_KEPT_HEADERS = frozenset({"content-type", "accept", "idempotency-key"})
