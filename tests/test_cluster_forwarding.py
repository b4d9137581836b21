"""Any node answers for a VM another node owns: the request is forwarded to the owner,
signed with the cluster secret. The attacks: a forged, tampered, stale, replayed or
foreign-secret signature is 401, and a node without the secret takes no forwarded
request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from etcdcluster import EtcdCluster
from hypermachine.api import Services, create_app
from hypermachine.cluster.forwarding import NodeAuth
from hypermachine.errors import Unauthorized
from hypermachine.security.caller import Caller
from realserver import Server, free_port

SECRET = b"a-cluster-secret-of-at-least-32-bytes!!"
ADMIN = Caller(key_id=None, tenant="default", tier="enterprise", admin=True)
ALICE = Caller(key_id="k-alice", tenant="alice", tier="pro", admin=False)


@pytest.fixture
def pair(tmp_path: Path, tiny: Path, etcd: EtcdCluster) -> Iterator[tuple[Server, Server]]:
    secret = tmp_path / "cluster.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    servers = []
    try:
        for name in ("f1", "f2"):
            data = tmp_path / name
            data.mkdir()
            server = Server(data, free_port())
            servers.append(server)
            server.start(
                ("HM_CLUSTER_SECRET_FILE", str(secret)),
                args=["--node", name, "--etcd", etcd.endpoints, "--advertise", server.url],
            )
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def test_a_vm_is_answered_by_its_owner_through_any_node(pair: tuple[Server, Server]) -> None:
    owner, other = pair
    vm = httpx.post(f"{owner.url}/api/v1/vms", json={"name": "far", "image": "tiny"}).json()
    assert vm["node"] == "f1", vm
    seen = httpx.get(f"{other.url}/api/v1/vms/{vm['id']}", timeout=30)
    assert seen.status_code == 200 and seen.json()["id"] == vm["id"], seen.text
    assert seen.json()["node"] == "f1"
    missing = httpx.get(f"{other.url}/api/v1/vms/vm-000000000000", timeout=30)
    assert missing.json()["error"]["code"] == "VM_NOT_FOUND"

    # Forged forwarding headers straight to the owner: refused, whatever they claim.
    auth = NodeAuth("f2", SECRET)
    target = f"/api/v1/vms/{vm['id']}?force=true"
    forged = NodeAuth("f2", b"x" * 40).headers(ADMIN, "DELETE", target, b"")
    refused = httpx.delete(f"{owner.url}{target}", headers=forged, timeout=30)
    assert refused.status_code == 401, (refused.status_code, refused.text)
    assert refused.json()["error"]["code"] == "UNAUTHORIZED"
    signed_get = auth.headers(ADMIN, "GET", target, b"")
    refused = httpx.delete(f"{owner.url}{target}", headers=signed_get, timeout=30)
    assert refused.status_code == 401, "a signature for another method must not pass"
    assert httpx.get(f"{owner.url}/api/v1/vms/{vm['id']}").status_code == 200

    deleted = httpx.delete(f"{other.url}{target}", timeout=30)
    assert deleted.status_code == 204, deleted.text
    assert httpx.get(f"{owner.url}/api/v1/vms/{vm['id']}").status_code == 404

    # A create pinned to the other node lands there, through this one.
    pinned = {"name": "pinned", "image": "tiny", "node": "f2"}
    made = httpx.post(f"{owner.url}/api/v1/vms", json=pinned, timeout=30)
    assert made.status_code == 201 and made.json()["node"] == "f2", made.text
    assert made.headers["location"] == f"/api/v1/vms/{made.json()['id']}"
    listed = httpx.get(f"{other.url}/api/v1/vms", timeout=30).json()["vms"]
    # The list spans the cluster; the session's etcd also holds other tests' nodes.
    ours = [(v["id"], v["node"]) for v in listed if v["node"] in ("f1", "f2")]
    assert ours == [(made.json()["id"], "f2")]
    nowhere = httpx.post(f"{owner.url}/api/v1/vms", json={**pinned, "node": "f9"}, timeout=30)
    assert (nowhere.status_code, nowhere.json()["error"]["code"]) == (404, "NODE_NOT_FOUND")
    gone = httpx.delete(f"{owner.url}/api/v1/vms/{made.json()['id']}", timeout=30)
    assert gone.status_code == 204, gone.text


def test_signatures_bind_everything_and_are_used_once() -> None:
    sender, receiver = NodeAuth("n2", SECRET), NodeAuth("n1", SECRET)
    target, body = "/api/v1/vms/vm-0123456789ab/exec", b'{"command": ["id"]}'
    headers = sender.headers(ALICE, "POST", target, body)
    assert receiver.caller_of(headers, "POST", target, body) == ALICE
    with pytest.raises(Unauthorized, match="replayed"):
        receiver.caller_of(headers, "POST", target, body)

    fresh = sender.headers(ALICE, "POST", target, body)
    for tampered in (
        ("POST", target, b'{"command": ["rm", "-rf", "/"]}'),
        ("POST", "/api/v1/vms/vm-ba9876543210/exec", body),
        ("DELETE", target, body),
    ):
        with pytest.raises(Unauthorized, match="valid cluster signature"):
            receiver.caller_of(fresh, *tampered)
    promoted = {**fresh, "X-HM-Forwarded-Caller": fresh["X-HM-Forwarded-Caller"].replace(
        '"admin": false', '"admin": true')}  # fmt: skip
    with pytest.raises(Unauthorized, match="valid cluster signature"):
        receiver.caller_of(promoted, "POST", target, body)

    at = f"{time.time() - 120:.3f}"
    caller = fresh["X-HM-Forwarded-Caller"]
    stale = {**fresh, "X-HM-Forwarded-At": at}
    stale["X-HM-Forwarded-Signature"] = sender._mac("n2", at, caller, "POST", target, body)
    with pytest.raises(Unauthorized, match="stale"):
        receiver.caller_of(stale, "POST", target, body)
    assert receiver.caller_of({}, "GET", target, b"") is None
    lowered = {
        name.lower(): value for name, value in sender.headers(ALICE, "GET", target, b"").items()
    }
    assert receiver.caller_of(lowered, "GET", target, b"") == ALICE, "header names have no case"
    forged = {name.lower(): "x" for name in fresh}
    with pytest.raises(Unauthorized):
        receiver.caller_of(forged, "GET", target, b"")


async def test_a_node_without_the_secret_takes_no_forwarded_request(client: Any) -> None:
    headers = NodeAuth("n2", SECRET).headers(ADMIN, "GET", "/api/v1/vms", b"")
    answer = await client.get("/api/v1/vms", headers=headers)
    assert answer.status_code == 401, await answer.get_data()


async def test_a_forwarded_caller_is_held_to_its_own_tenant(services: Services) -> None:
    """The owner checks the VM against the caller the forwarding node vouches for."""
    app = create_app(services)
    app.extensions["hypermachine.node_auth"] = NodeAuth("n1", SECRET)
    client = app.test_client()
    created = await client.post("/api/v1/vms", json={"name": "bobs", "image": "tiny"})
    vm = await created.get_json()
    sender = NodeAuth("n2", SECRET)
    target = f"/api/v1/vms/{vm['id']}"
    answer = await client.get(target, headers=sender.headers(ALICE, "GET", target, b""))
    assert answer.status_code == 404, await answer.get_data()
    answer = await client.get(target, headers=sender.headers(ADMIN, "GET", target, b""))
    assert answer.status_code == 200
    as_alice = sender.headers(ALICE, "GET", "/api/v1/vms", b"")
    listed = await client.get("/api/v1/vms", headers=as_alice)
    assert (await listed.get_json())["vms"] == []
