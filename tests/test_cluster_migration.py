"""Live migration between two real ``hypermachine serve`` nodes on a real 3-member etcd:
a running guest moves with its RAM (a file in its RAM-backed root, its uptime) and its
disk (a file it wrote to its ext4 disk) — a UEFI guest with a vTPM with its folder
copied (disk over NBD, its VARS, its TPM state in the stream), a tiny guest on the
storage both nodes share, there and back, not copied. Exactly one QEMU runs the VM
afterwards, etcd names the new owner, and the old node keeps no record; a migration
the destination refuses leaves the guest running where it was. The node-to-node
routes refuse every caller but a node of the cluster."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from quart_trio import QuartTrio

from clusternodes import Node, kill_watchdog, make_key, owner_of, running, write_secret
from etcdcluster import EtcdCluster
from hypermachine.api.peer import install_peer_routes
from hypermachine.cluster.forwarding import NodeAuth
from hypermachine.cluster.ownership import owner_key
from hypermachine.hypervisor.devices.hostnet import interface_exists
from hypermachine.hypervisor.qemu import qmp_commands
from hypermachine.hypervisor.qemu.machine import Machine
from hypermachine.hypervisor.qemu.qmp import QmpBridge
from hypermachine.hypervisor.storage.snapshots import wait_migration
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from hypermachine.security.caller import SYSTEM
from support import process_gone, qemu_pids_for, require_tiny, wait_until
from testnet import ScratchBridge, scratch_bridge

SECRET = b"the-migration-cluster-secret-of-32-bytes-or-more"


@pytest.fixture(scope="module")
def bridge() -> Iterator[ScratchBridge]:
    """A bridge both nodes have (they run on one kernel here; on real hosts each its
    own bridge of the same name on the same segment), with a peer namespace on it."""
    with scratch_bridge(peer=True) as made:
        yield made


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, etcd: EtcdCluster, bridge: ScratchBridge
) -> Iterator[list[Node]]:
    require_tiny()
    root = tmp_path_factory.mktemp("migration")
    secret = write_secret(root, SECRET)
    shared = root / "shared"
    keys = {"alice": make_key(root, etcd, "alice"), "admin": make_key(root, etcd, "ops", "--admin")}
    config = root / "bridges.toml"
    config.write_text(f"[bridges.{bridge.name}]\n" + "".join(
        f'{key} = "{value}"\n' for key, value in bridge.config().items()
    ))  # fmt: skip
    env = (("HM_SHARED_STORAGE_DIR", str(shared)), ("HM_CONFIG", str(config)))
    found = []
    for name in ("m1", "m2"):
        (root / name).mkdir()
        found.append(Node(name, root / name, keys, *env))
    with running(found, etcd, secret):
        yield found


def _sh(node: Node, vm_id: str, script: str, wait_s: int = 120) -> str:
    ran = node.call("alice", "POST", f"/api/v1/vms/{vm_id}/exec?wait_agent={wait_s}",
                    json={"command": ["sh", "-c", script]}, timeout=wait_s + 60)  # fmt: skip
    assert ran.status_code == 200, ran.text
    assert ran.json()["exit_code"] == 0, ran.json()
    return str(ran.json()["stdout"])


def _running(node: Node, name: str, **spec: Any) -> dict[str, Any]:
    body = {"name": name, "image": "tiny", "node": node.name, "start": True, "wait": True}
    made = node.call("alice", "POST", "/api/v1/vms", json={**body, **spec})
    assert made.status_code == 201, made.text
    assert made.json()["state"] == "running", made.json()
    return dict(made.json())


def _uptime(node: Node, vm_id: str) -> float:
    return float(_sh(node, vm_id, "cut -d' ' -f1 /proc/uptime"))


async def _migrated(
    source: Node, dest: Node, via: Node, vm: dict[str, Any], etcd: EtcdCluster
) -> dict[str, Any]:
    """Move ``vm`` from ``source`` to ``dest`` (asked of ``via``) and check what must hold
    whatever its storage: RAM, uptime, disk, one QEMU, etcd's owner, no record left."""
    vm_id = vm["id"]
    _sh(source, vm_id, "echo in-ram > /tmp/ram-marker && echo on-disk > /mnt/disk-marker && sync")
    before = _uptime(source, vm_id)
    moved = via.call("alice", "POST", f"/api/v1/vms/{vm_id}/migrate", json={"node": dest.name})
    assert moved.status_code == 200, moved.text
    result = moved.json()
    assert (result["source_node"], result["node"], result["vm"]["node"]) == (
        source.name, dest.name, dest.name,
    )  # fmt: skip
    assert result["vm"]["state"] == "running"
    assert result["total_time_ms"] > 0 and result["downtime_ms"] >= 0

    # The guest kept running: what was in its RAM, its uptime, its disk.
    assert _sh(dest, vm_id, "cat /tmp/ram-marker /mnt/disk-marker") == "in-ram\non-disk\n"
    assert _uptime(dest, vm_id) > before
    _sh(dest, vm_id, "echo after > /mnt/after-marker && sync")
    assert _sh(dest, vm_id, "cat /mnt/after-marker") == "after\n"

    # One QEMU, the destination's; etcd names it; the source holds no record.
    assert qemu_pids_for({vm["uuid"]}) == [result["vm"]["pid"]]
    assert source.server.proc is not None
    assert psutil.Process(result["vm"]["pid"]).ppid() != source.server.proc.pid
    assert owner_of(etcd, vm_id) == dest.name
    assert [v["node"] for v in source.vms("alice") if v["id"] == vm_id] == [dest.name]
    for node in (source, dest):  # any node answers for it
        assert node.call("alice", "GET", f"/api/v1/vms/{vm_id}").json()["node"] == dest.name
    done = _step_event(source, vm_id, "completed")
    assert (done["total_time_ms"], done["downtime_ms"]) == (
        result["total_time_ms"], result["downtime_ms"],
    )  # fmt: skip
    assert _step_event(dest, vm_id, "arrived")["source_node"] == source.name
    return dict(result)


def _step_event(node: Node, vm_id: str, step: str) -> dict[str, Any]:
    """The data of the VM's ``vm.migration`` event with ``step`` in ``node``'s own log."""
    headers = {"Authorization": f"Bearer {node.keys['admin']}"}
    url = f"{node.server.url}/api/v1/events?vm_id={vm_id}&after=0"
    with httpx.stream("GET", url, headers=headers, timeout=10) as answer:
        for line in answer.iter_lines():
            event = json.loads(line.partition(":")[2]) if line.startswith("data:") else {}
            if event.get("type") == "vm.migration" and event["data"].get("step") == step:
                return dict(event["data"])
    raise AssertionError(f"no {step} step on {node.name}")


async def test_a_bridge_vm_on_shared_storage_moves_without_copying_its_disk(
    nodes: list[Node], etcd: EtcdCluster, bridge: ScratchBridge
) -> None:
    """On a bridge with a static IP: the peer reaches it after each move, through the
    destination's own tap; the source's tap is gone."""
    first, second = nodes
    address = bridge.host(30)
    vm = _running(second, "shared-moving", restart_policy="on_node_failure",
                  network={"type": "bridge", "ip": address})  # fmt: skip
    assert _sh(second, vm["id"], "echo up") == "up\n"
    disk = next(Path(second.server.data_dir).parent.glob(f"shared/**/{vm['id']}/disk.qcow2"))
    layer = disk.resolve().stat().st_ino

    for source, dest in ((second, first), (first, second)):  # an arrived VM moves on too
        tap = source.call("alice", "GET", f"/api/v1/vms/{vm['id']}").json()["network_info"]["tap"]
        moved = await _migrated(source, dest, first, vm, etcd)
        assert disk.resolve().stat().st_ino == layer  # the same file, not a copy
        assert moved["vm"]["network_info"]["tap"] != tap and not interface_exists(tap)
        await wait_until(lambda: bridge.ping(address), timeout=60, what="the moved VM's ping")
    await _refused(second, first, vm, etcd)
    assert second.call("alice", "DELETE", f"/api/v1/vms/{vm['id']}?force=true").status_code == 204


async def _refused(source: Node, dest: Node, vm: dict[str, Any], etcd: EtcdCluster) -> None:
    """The destination refuses (its tenant has a VM of that name there already): the
    guest runs on in its QEMU on the source, which still owns it; nothing is left."""
    twin = dest.call("alice", "POST", "/api/v1/vms",
                     json={"name": vm["name"], "image": "tiny", "node": dest.name})  # fmt: skip
    assert twin.status_code == 201, twin.text
    _sh(source, vm["id"], "echo kept > /tmp/ram-marker")
    pid = source.call("alice", "GET", f"/api/v1/vms/{vm['id']}").json()["pid"]
    refused = source.call("alice", "POST", f"/api/v1/vms/{vm['id']}/migrate",
                          json={"node": dest.name})  # fmt: skip
    assert refused.status_code == 409, refused.text
    assert vm["name"] in refused.json()["error"]["message"]
    assert _sh(source, vm["id"], "cat /tmp/ram-marker") == "kept\n"
    assert qemu_pids_for({vm["uuid"]}) == [pid]
    assert owner_of(etcd, vm["id"]) == source.name
    assert dest.call("alice", "DELETE", f"/api/v1/vms/{twin.json()['id']}").status_code == 204


def _peer_rules() -> list[tuple[str, str]]:
    """Every node-to-node route, from the route map the server builds."""
    app = QuartTrio(__name__)
    install_peer_routes(app)
    return [
        (method, rule.rule.replace("<token>", "0" * 32).replace("<path:name>", "disk-0001.qcow2"))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/cluster/")
        for method in sorted(rule.methods or ())
        if method not in ("HEAD", "OPTIONS")
    ]


def test_the_node_to_node_routes_refuse_everyone_but_a_node(nodes: list[Node]) -> None:
    first = nodes[0]
    rules = _peer_rules()
    assert len(rules) == 5
    forged = {
        "X-HM-Forwarded-By": "m2",
        "X-HM-Forwarded-At": "0",
        "X-HM-Forwarded-Caller": '{"admin": true, "key_id": null, "tenant": "", "tier": "free"}',
        "X-HM-Forwarded-Signature": "0" * 64,
    }
    for method, path in rules:
        for who, status in (("alice", 403), ("admin", 403)):
            answer = first.call(who, method, path, content=b"{}")
            assert answer.status_code == status, (who, method, path, answer.text)
        answer = httpx.request(method, first.server.url + path, headers=forged, timeout=10)
        assert answer.status_code == 401, (method, path, answer.text)
        answer = httpx.request(method, first.server.url + path, content=b"{}", timeout=10)
        assert answer.status_code == 403, (method, path, answer.text)  # no key at all


EFIVARS = "/sys/firmware/efi/efivars"
VAR_GUID = "3f6c2a5e-1b7d-4c9e-8f10-2a3b4c5d6e7f"
VAR, AFTER_VAR = f"{EFIVARS}/HmMoved-{VAR_GUID}", f"{EFIVARS}/HmAfter-{VAR_GUID}"
PCR16 = "/sys/class/tpm/tpm0/pcr-sha256/16"


async def test_a_uefi_vm_moves_with_its_vtpm_and_its_vars(
    nodes: list[Node], etcd: EtcdCluster
) -> None:
    """OVMF with a vTPM, moved with its folder copied (disk layers, VARS, a snapshot): a
    UEFI variable written before is there after and one written after lands in the
    destination's VARS file; the TPM answers with the PCR the guest extended before
    (its state came in the stream); the source's folder is gone; the memory snapshot
    taken before the move restores on the destination."""
    first, second = nodes
    vm = _running(first, "uefi-moving", image="tiny-efi", security={"vtpm": True})
    vm_id = vm["id"]
    unknown = first.call("alice", "POST", f"/api/v1/vms/{vm_id}/migrate", json={"node": "m9"})
    assert unknown.status_code == 404, unknown.text
    folder = Path(first.server.data_dir) / "vms" / vm_id
    _sh(first, vm_id, f"mount -t efivarfs efivarfs {EFIVARS}; "
                      f"printf '\\007\\000\\000\\000before' > {VAR}", wait_s=300)  # fmt: skip
    extend = "printf '\\200\\002\\000\\000\\000\\101\\000\\000\\001\\202\\000\\000\\000\\020"
    extend += "\\000\\000\\000\\011\\100\\000\\000\\011\\000\\000\\000\\000\\000"
    extend += "\\000\\000\\000\\001\\000\\013" + "\\252" * 32 + "' > /dev/tpm0"
    before = _sh(first, vm_id, f"{extend}; cat {PCR16}")
    assert before.strip() != "0" * 64
    _sh(first, vm_id, "echo at-snapshot > /tmp/snap-marker")
    snap = first.call("alice", "POST", f"/api/v1/vms/{vm_id}/snapshots",
                      json={"name": "before-move", "memory": True}, timeout=300)  # fmt: skip
    assert snap.status_code == 201, snap.text
    _sh(first, vm_id, "echo after-snapshot > /tmp/snap-marker")

    # A link planted in the folder (QEMU's user may write it) is never read through.
    planted = folder / "disk-0099.qcow2"
    planted.symlink_to("/etc/hostname")
    refused = first.call("alice", "POST", f"/api/v1/vms/{vm_id}/migrate", json={"node": "m2"})
    assert refused.status_code == 409 and "disk-0099.qcow2" in refused.text, refused.text
    assert not (Path(second.server.data_dir) / "vms" / vm_id).exists()
    planted.unlink()

    await _migrated(first, second, first, vm, etcd)
    assert not folder.exists()  # its own folder went with it
    assert _sh(second, vm_id, f"tail -c +5 {VAR}") == "before"
    assert _sh(second, vm_id, f"cat {PCR16}") == before
    _sh(second, vm_id, f"printf '\\007\\000\\000\\000after!' > {AFTER_VAR}")
    vars_file = Path(second.server.data_dir) / "vms" / vm_id / "efivars.fd"
    await wait_until(lambda: b"after!" in vars_file.read_bytes(), what="the variable in VARS")

    listed = second.call("alice", "GET", f"/api/v1/vms/{vm_id}/snapshots").json()
    assert [s["name"] for s in listed["snapshots"]] == ["before-move"], listed
    back = second.call("alice", "POST", f"/api/v1/vms/{vm_id}/snapshots/before-move/restore",
                       json={}, timeout=300)  # fmt: skip
    assert back.status_code == 200, back.text
    assert _sh(second, vm_id, "cat /tmp/snap-marker") == "at-snapshot\n"
    assert second.call("alice", "DELETE", f"/api/v1/vms/{vm_id}?force=true").status_code == 204


def test_a_signed_offer_cannot_place_files_outside_the_vms_folder(
    nodes: list[Node], tmp_path: Path
) -> None:
    """Even a node holding the cluster secret cannot make another write outside the
    folder of the VM it offers, nor send chunks of files it did not offer."""
    first, second = nodes
    made = second.call("alice", "POST", "/api/v1/vms", json={"name": "offered", "image": "tiny"})
    assert made.status_code == 201, made.text
    vm = {**made.json(), "id": "vm-0ffe0ffe0ffe", "name": "offered-copy"}
    auth = NodeAuth("m2", SECRET)
    token = "0f" * 16
    plan = {"files": {"../../outside": 4}, "top": "disk-0001.qcow2", "virtual_size": 1 << 30,
            "mirrored": ["disk0"]}  # fmt: skip
    offer = json.dumps({"token": token, "source_node": "m2", "vm": vm, "disk": plan}).encode()

    def signed(method: str, path: str, body: bytes) -> httpx.Response:
        headers = auth.headers(SYSTEM, method, path, body)
        return httpx.request(method, first.server.url + path, headers=headers, content=body)

    refused = signed("POST", f"/cluster/v1/migrations/{token}", offer)
    assert refused.status_code == 409 and "outside" in refused.text, refused.text
    assert not (Path(first.server.data_dir) / "vms" / vm["id"]).exists()
    chunk = signed("PUT", f"/cluster/v1/migrations/{token}/files/disk-0009.qcow2?offset=0", b"x")
    assert chunk.status_code == 404, chunk.text  # no such migration: nothing written
    hidden = signed("PUT", f"/cluster/v1/migrations/{token}/files/.hidden?offset=0", b"evil")
    assert hidden.status_code == 400, hidden.text
    assert second.call("alice", "DELETE", f"/api/v1/vms/{made.json()['id']}").status_code == 204


async def test_a_source_that_died_after_the_hand_over_drops_its_paused_copy(
    nodes: list[Node], etcd: EtcdCluster
) -> None:
    """The source's server dies between handing the VM over in etcd and quitting its
    QEMU, which stays paused with its state sent (``postmigrate``); its watchdog is
    gone too, or it would fence that QEMU before the test has staged it. Restarted, the
    server drops that QEMU and the record: it never runs a second copy."""
    first, _ = nodes
    vm = _running(first, "stale-source")
    assert _sh(first, vm["id"], "echo up") == "up\n"
    pid = first.call("alice", "GET", f"/api/v1/vms/{vm['id']}").json()["pid"]
    argv = psutil.Process(pid).cmdline()
    run_dir = Path(argv[argv.index("-pidfile") + 1]).parent
    first.server.kill9()
    kill_watchdog(first)

    # As the crash left it: the state sent (to /dev/null here), etcd naming m2.
    bridge = QmpBridge()
    paths = VmPaths(vm_dir=Path(first.server.data_dir) / "vms" / vm["id"], run_dir=run_dir)
    qemu = Machine(vm_id=vm["id"], pid=pid, paths=paths)
    try:
        await qemu.connect(bridge, 20)
        with open(os.devnull, "wb") as sink:
            await qmp_commands.getfd(qemu, sink.fileno(), "gone")
        await qmp_commands.migrate(qemu, "gone")
        await wait_migration(qemu, 60, sending=True)
        assert (await qmp_commands.query_status(qemu)).status == "postmigrate"
    finally:
        if qemu.session is not None:
            await qemu.session.close()
        bridge.close()
    _put(etcd, owner_key(vm["id"]), "m2")

    first.start(etcd, Path(first.server.data_dir).parent / "cluster.secret")
    await wait_until(lambda: process_gone(pid), what="the stale copy's QEMU to go")
    assert qemu_pids_for({vm["uuid"]}) == []
    assert _step_event(first, vm["id"], "left")["node"] == "m1"  # its record went
    assert not paths.vm_dir.exists()  # and its folder: m2 has the copy
    etcd.delete_prefix(owner_key(vm["id"]))


def _put(etcd: EtcdCluster, key: str, value: str) -> None:
    body = {"key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(value.encode()).decode()}  # fmt: skip
    httpx.post(f"{etcd.client_urls[0]}/v3/kv/put", json=body, timeout=10).raise_for_status()
