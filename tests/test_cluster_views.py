"""The cluster-wide view of VMs on three real ``hypermachine serve`` processes and a
real 3-member etcd: any node lists a tenant's VMs of every node (each naming its
node) and reads one owned elsewhere; another tenant's VMs never show, through any
node. The API keys are the cluster's: one made or revoked through any node counts on
every node at once, and a tenant's live-VM quota counts its VMs of every node (two
nodes starting its last allowed VM at the same moment: one of them wins), and so does
a key's rate limit. A node
killed with SIGKILL (its QEMUs too, as a crashed host) has its VMs shown ``unknown``
on the others within its lease, and their real state once it is back."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from httpx_ws import AsyncWebSocketSession, WebSocketUpgradeError, aconnect_ws

from clusternodes import FREE_RATE, RESTART_TTL_S, TTL_S, Node, make_key, running, write_secret
from etcdcluster import EtcdCluster
from support import qemu_pids_for, require_tiny, wait_until

NAMES = ("v1", "v2", "v3")
SECRET = b"the-views-cluster-secret-of-32-bytes-or-more"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, etcd: EtcdCluster) -> Iterator[list[Node]]:
    require_tiny()
    root = tmp_path_factory.mktemp("views")
    secret = write_secret(root, SECRET)
    keys = {tenant: make_key(root, etcd, tenant) for tenant in ("alice", "bob")}
    keys["admin"] = make_key(root, etcd, "ops", "--admin")
    nodes = []
    for name in NAMES:
        (root / name).mkdir()
        # v1 and v3 restart with a VM running (the quota's test): a lease long enough
        # for a server to be back before its watchdog fences; v2 dies (a short one).
        ttl_s = TTL_S if name == "v2" else RESTART_TTL_S
        nodes.append(Node(name, root / name, keys, ttl_s=ttl_s))
    with running(nodes, etcd, secret):
        yield nodes


def _create(node: Node, tenant: str, name: str, on: str) -> dict[str, Any]:
    spec = {"name": name, "image": "tiny", "node": on}
    made = node.call(tenant, "POST", "/api/v1/vms", json=spec)
    assert made.status_code == 201, made.text
    assert made.json()["node"] == on
    return dict(made.json())


def _ids(vms: list[dict[str, Any]]) -> dict[str, str]:
    return {vm["id"]: vm["node"] for vm in vms}


async def test_every_node_lists_a_tenants_vms_of_every_node(cluster: list[Node]) -> None:
    first, second, third = cluster
    a1 = _create(first, "alice", "a-one", on="v1")
    a2 = _create(first, "alice", "a-two", on="v2")
    b3 = _create(third, "bob", "b-three", on="v3")
    alices = {a1["id"]: "v1", a2["id"]: "v2"}
    for node in cluster:
        await wait_until(
            lambda node=node: _ids(node.vms("alice")) == alices,  # type: ignore[misc]
            timeout=TTL_S * 3,
            what=f"{node.name} to list alice's VMs of every node",
        )
        assert _ids(node.vms("bob")) == {b3["id"]: "v3"}, "bob sees his VM only"

    # One VM owned elsewhere, read through another node; another tenant's is not found.
    seen = third.call("alice", "GET", f"/api/v1/vms/{a1['id']}")
    assert seen.status_code == 200 and seen.json()["node"] == "v1", seen.text
    for node in cluster:
        hidden = node.call("bob", "GET", f"/api/v1/vms/{a1['id']}")
        assert (hidden.status_code, hidden.json()["error"]["code"]) == (404, "VM_NOT_FOUND")
        assert node.call("alice", "GET", f"/api/v1/vms/{b3['id']}").status_code == 404

    # Filters and pages span the nodes; a cursor not handed out is a 400.
    assert [vm["id"] for vm in second.vms("alice", "?name=a-two")] == [a2["id"]]
    page = second.call("alice", "GET", "/api/v1/vms?limit=1").json()
    assert [vm["id"] for vm in page["vms"]] == [a1["id"]] and page["next_cursor"]
    rest = second.call("alice", "GET", f"/api/v1/vms?limit=1&cursor={page['next_cursor']}")
    assert [vm["id"] for vm in rest.json()["vms"]] == [a2["id"]], rest.text
    assert rest.json()["next_cursor"] is None
    bad = second.call("alice", "GET", "/api/v1/vms?cursor=bm9wZQ")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "BAD_REQUEST"), bad.text

    # A deleted VM leaves every node's list.
    gone = third.call("alice", "DELETE", f"/api/v1/vms/{a1['id']}")
    assert gone.status_code == 204, gone.text
    for node in cluster:
        assert _ids(node.vms("alice")) == {a2["id"]: "v2"}


async def test_a_dead_nodes_vms_are_unknown_until_it_is_back(
    cluster: list[Node], etcd: EtcdCluster
) -> None:
    first, second, third = cluster
    vm = _create(first, "alice", "on-v2", on="v2")
    started = second.call("alice", "POST", f"/api/v1/vms/{vm['id']}/start", json={})
    assert started.status_code == 202, started.text
    await wait_until(
        lambda: [v["state"] for v in first.vms("alice") if v["id"] == vm["id"]] == ["running"],
        timeout=90,
        what="v1 to list the VM running on v2",
    )

    # v2 crashes: its server and its QEMU are killed.
    second.server.kill9()
    qemus = qemu_pids_for({vm["uuid"]})
    assert len(qemus) == 1, qemus
    os.kill(qemus[0], signal.SIGKILL)
    killed = time.monotonic()

    def unknown_everywhere() -> bool:
        listed = [v for node in (first, third) for v in node.vms("alice") if v["id"] == vm["id"]]
        return len(listed) == 2 and all(v["state"] == "unknown" for v in listed)

    await wait_until(unknown_everywhere, timeout=TTL_S + 2, what="the VM shown unknown")
    assert time.monotonic() - killed <= TTL_S + 2
    for node in (first, third):
        (listed,) = [v for v in node.vms("alice") if v["id"] == vm["id"]]
        assert listed["state_reason"].startswith("node v2 is down since "), listed
        read = node.call("alice", "GET", f"/api/v1/vms/{vm['id']}")
        assert read.status_code == 200, read.text
        assert (read.json()["state"], read.json()["node"]) == ("unknown", "v2")
        hidden = node.call("bob", "GET", f"/api/v1/vms/{vm['id']}")
        assert hidden.status_code == 404, "a down node's VMs stay their tenant's"
        assert vm["id"] not in _ids(node.vms("bob"))
        acted = node.call("alice", "POST", f"/api/v1/vms/{vm['id']}/stop", json={})
        assert (acted.status_code, acted.json()["error"]["code"]) == (503, "CLUSTER_UNAVAILABLE")

    # v2 is back: the VM shows what v2 itself says of it.
    second.start(etcd, second.server.data_dir.parent / "cluster.secret")
    own = second.call("alice", "GET", f"/api/v1/vms/{vm['id']}").json()
    assert own["state"] != "unknown", own

    def real_everywhere() -> bool:
        return all(
            node.call("alice", "GET", f"/api/v1/vms/{vm['id']}").json()["state"] == own["state"]
            and [v["state"] for v in node.vms("alice") if v["id"] == vm["id"]] == [own["state"]]
            for node in (first, third)
        )

    await wait_until(real_everywhere, timeout=TTL_S * 3, what="the VM's real state shown again")
    assert second.call("alice", "DELETE", f"/api/v1/vms/{vm['id']}?force=true").status_code == 204


def test_a_key_made_or_revoked_through_one_node_counts_on_every_node(
    cluster: list[Node],
) -> None:
    first, second, third = cluster
    made = first.call("admin", "POST", "/api/v1/keys", json={"name": "carol", "tier": "free"})
    assert made.status_code == 201, made.text
    carol = made.json()
    headers = {"Authorization": f"Bearer {carol['key']}"}
    for node in cluster:
        answer = httpx.get(f"{node.server.url}/api/v1/vms", headers=headers, timeout=30)
        assert (answer.status_code, answer.json()["vms"]) == (200, []), (node.name, answer.text)
        listed = node.call("admin", "GET", "/api/v1/keys").json()["keys"]
        assert carol["id"] in [key["id"] for key in listed], node.name
        assert "key" not in listed[-1], "a listed key never carries its secret"

    revoked = third.call("admin", "DELETE", f"/api/v1/keys/{carol['id']}")
    assert revoked.status_code == 204, revoked.text
    for node in cluster:
        answer = httpx.get(f"{node.server.url}/api/v1/vms", headers=headers, timeout=30)
        assert answer.status_code == 401, (node.name, answer.text)

    # Each node's audit log names the node that did it.
    entries = third.call("admin", "GET", "/api/v1/audit").json()["entries"]
    (revoke,) = [e for e in entries if e["operation"] == "revoke_key"]
    assert (revoke["target"], revoke["node"]) == (carol["id"], "v3"), revoke
    entries = first.call("admin", "GET", "/api/v1/audit").json()["entries"]
    assert any(e["operation"] == "create_key" and e["node"] == "v1" for e in entries), entries
    unknown = second.call("admin", "DELETE", "/api/v1/keys/key-000000000000")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "KEY_NOT_FOUND")


async def test_a_tenants_quota_counts_its_vms_of_every_node(
    cluster: list[Node], etcd: EtcdCluster
) -> None:
    first, second, third = cluster
    made = first.call("admin", "POST", "/api/v1/keys", json={"name": "dave", "tier": "free"})
    assert made.status_code == 201, made.text
    dave = {"Authorization": f"Bearer {made.json()['key']}"}  # tier free: one live VM

    def call(node: Node, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{node.server.url}{path}", headers=dave, timeout=60, **kwargs)

    vms = []
    for on in ("v1", "v3"):
        answer = call(third, "POST", "/api/v1/vms", json={"name": f"d-{on}", "image": "tiny",
                                                           "node": on})  # fmt: skip
        assert answer.status_code == 201, answer.text
        vms.append(answer.json())

    # Both started at once, through two nodes, on two nodes: exactly one may run.
    answers: dict[str, httpx.Response] = {}

    async def start(node: Node, vm: dict[str, Any]) -> None:
        answers[vm["id"]] = await trio.to_thread.run_sync(
            lambda: call(node, "POST", f"/api/v1/vms/{vm['id']}/start", json={})
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start, first, vms[0])
        nursery.start_soon(start, second, vms[1])
    codes = sorted(answer.status_code for answer in answers.values())
    assert codes == [202, 403], {k: a.text for k, a in answers.items()}
    (winner,) = [vm for vm in vms if answers[vm["id"]].status_code == 202]
    (loser,) = [vm for vm in vms if vm is not winner]
    refused = answers[loser["id"]].json()["error"]
    assert refused["code"] == "QUOTA_EXCEEDED" and refused["details"]["limit"] == 1, refused
    assert call(first, "GET", f"/api/v1/vms/{loser['id']}").json()["state"] == "stopped"

    # The winner's node restarts (its VMs keep running): the winner still counts.
    owner = next(node for node in cluster if node.name == winner["node"])
    owner.server.stop()
    owner.start(etcd, owner.server.data_dir.parent / "cluster.secret")
    still = call(third, "POST", f"/api/v1/vms/{loser['id']}/start", json={})
    assert (still.status_code, still.json()["error"]["code"]) == (403, "QUOTA_EXCEEDED"), still.text

    # Once the winner is stopped (through the third node), the loser may start.
    stopped = call(third, "POST", f"/api/v1/vms/{winner['id']}/stop",
                   json={"force": True, "wait": True})  # fmt: skip
    assert stopped.status_code == 200, stopped.text
    again = call(third, "POST", f"/api/v1/vms/{loser['id']}/start", json={})
    assert again.status_code == 202, again.text
    for vm in vms:
        assert call(first, "DELETE", f"/api/v1/vms/{vm['id']}?force=true").status_code == 204


async def _console_says(node: Node, headers: dict[str, str], vm_id: str, word: str) -> str:
    """Type ``echo`` on the VM's serial console through ``node``; what came back."""
    seen = b""
    ws: AsyncWebSocketSession
    async with (
        httpx.AsyncClient(base_url=node.server.url, headers=headers, timeout=60) as http,
        aconnect_ws(f"/api/v1/vms/{vm_id}/console", http) as ws,
    ):
        await ws.send_text(f"echo {word}-$((6*7))\n")
        with trio.fail_after(60):
            while f"{word}-42".encode() not in seen:
                seen += await ws.receive_bytes()
    return seen.decode(errors="replace")


async def test_a_console_is_relayed_from_any_node(cluster: list[Node]) -> None:
    first, second, third = cluster
    vm = _create(third, "alice", "consoled", on="v1")
    started = first.call("alice", "POST", f"/api/v1/vms/{vm['id']}/start", json={})
    assert started.status_code == 202, started.text
    ran = second.call("alice", "POST", f"/api/v1/vms/{vm['id']}/exec?wait_agent=120",
                      json={"command": ["echo", "through v2"]})  # fmt: skip
    assert (ran.status_code, ran.json()["stdout"]) == (200, "through v2\n"), ran.text
    alice = {"Authorization": f"Bearer {first.keys['alice']}"}
    for node in (second, third):  # v1 runs it; each of the others relays its console
        said = await _console_says(node, alice, vm["id"], f"relay-{node.name}")
        assert f"relay-{node.name}-42" in said

    # The owner's refusals come back as they were; the relaying node's own come first.
    bob = {"Authorization": f"Bearer {first.keys['bob']}"}
    foreign = {**alice, "Origin": "http://attacker.example"}
    for headers, status in ((bob, 404), (foreign, 403), ({}, 401)):
        with pytest.raises(WebSocketUpgradeError) as refused:
            await _console_says(second, headers, vm["id"], "never")
        assert refused.value.response.status_code == status, headers
    assert first.call("alice", "DELETE", f"/api/v1/vms/{vm['id']}?force=true").status_code == 204


async def test_an_exec_stream_is_relayed_as_it_runs(cluster: list[Node]) -> None:
    first, second, third = cluster
    vm = _create(third, "alice", "streamed", on="v1")
    started = first.call("alice", "POST", f"/api/v1/vms/{vm['id']}/start", json={})
    assert started.status_code == 202, started.text
    script = "echo one; sleep 3; echo two"
    run = third.call("alice", "POST", f"/api/v1/vms/{vm['id']}/exec?wait_agent=120",
                     json={"command": ["sh", "-c", script], "wait": False})  # fmt: skip
    assert run.status_code == 202, run.text
    headers = {"Authorization": f"Bearer {first.keys['alice']}"}
    arrived: dict[str, float] = {}
    path = f"/api/v1/vms/{vm['id']}/exec/{run.json()['exec_id']}/stream"
    async with (
        httpx.AsyncClient(base_url=second.server.url, headers=headers, timeout=60) as http,
        http.stream("GET", path) as answer,
    ):
        assert answer.status_code == 200 and "event-stream" in answer.headers["content-type"]
        with trio.fail_after(60):
            async for line in answer.aiter_lines():
                for word in ("one", "two", "exit"):
                    if word in line and word not in arrived:
                        arrived[word] = trio.current_time()
                if "exit" in arrived:
                    break
    assert set(arrived) == {"one", "two", "exit"}, arrived
    assert arrived["one"] < arrived["two"] - 2, "the first line came through v2 as it ran"
    assert first.call("alice", "DELETE", f"/api/v1/vms/{vm['id']}?force=true").status_code == 204


def test_a_keys_rate_limit_counts_its_requests_on_every_node(cluster: list[Node]) -> None:
    made = cluster[0].call("admin", "POST", "/api/v1/keys", json={"name": "erin", "tier": "free"})
    assert made.status_code == 201, made.text
    erin = {"Authorization": f"Bearer {made.json()['key']}"}
    remaining = []
    for n in range(FREE_RATE):  # round the nodes: each takes a third of the minute's share
        node = cluster[n % len(cluster)]
        answer = httpx.get(f"{node.server.url}/api/v1/vms", headers=erin, timeout=30)
        assert answer.status_code == 200, (n, node.name, answer.text)
        remaining.append(int(answer.headers["RateLimit-Remaining"]))
    assert remaining == list(range(FREE_RATE - 1, -1, -1)), remaining
    for node in cluster:  # the minute's share is used up, whichever node is asked
        refused = httpx.get(f"{node.server.url}/api/v1/vms", headers=erin, timeout=30)
        assert refused.status_code == 429, (node.name, refused.text)
        assert refused.json()["error"]["code"] == "RATE_LIMITED"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
    other = cluster[1].call("alice", "GET", "/api/v1/vms")
    assert other.status_code == 200, "another key has its own count"
