"""Placement on create (cluster/placement.py): a node that is up, has the capabilities
the VM needs and room for it; the most free memory wins; a pinned node or a clear
refusal naming every node's reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from hypermachine.cluster.placement import needs, place
from hypermachine.errors import InsufficientResources, NodeNotFound
from hypermachine.models import CreateVmRequest, Node, NodeState


def node(name: str, *, free_mb: int = 8192, vcpus: int = 8, caps: tuple[str, ...] = ("uefi",),
         state: NodeState = NodeState.UP) -> Node:  # fmt: skip
    return Node(
        name=name, url=f"http://{name}:8080", state=state, accelerator="kvm",
        qemu_version="7.2", capabilities=list(caps), cpus=8, memory_mb=16384,
        free_vcpus=vcpus, free_memory_mb=free_mb, vms=0, live_vms=0,
        updated_at=datetime.now(UTC),
    )  # fmt: skip


def request(**fields: Any) -> CreateVmRequest:
    return CreateVmRequest.model_validate({"name": "v", "image": "tiny", **fields})


def test_the_node_with_room_and_what_the_vm_needs_wins() -> None:
    nodes = [
        node("a", free_mb=4096),
        node("b", free_mb=16384, caps=()),
        node("c", free_mb=8192, caps=("uefi", "vtpm")),
        node("d", free_mb=32768, state=NodeState.DOWN),
    ]
    assert place(request(memory_mb=1024), nodes).name == "b"  # most free memory, up
    assert place(request(firmware="uefi"), nodes).name == "c"  # b has no UEFI
    assert needs(request(security={"vtpm": True})) == ["vtpm"]
    assert place(request(security={"vtpm": True}), nodes).name == "c"
    assert place(request(memory_mb=1024, node="a"), nodes).name == "a"  # pinned
    assert place(request(), [node("y"), node("x")]).name == "x", "ties go by name"


def test_a_gpu_needs_vfio_and_kvm_goes_before_tcg() -> None:
    gpu = {"gpu": {"enabled": True}}
    assert needs(request(**gpu)) == ["vfio"]
    nodes = [node("big", free_mb=65536), node("gpu", caps=("uefi", "vfio"))]
    assert place(request(**gpu), nodes).name == "gpu"
    with pytest.raises(InsufficientResources, match="big: lacks vfio"):
        place(request(**gpu), nodes[:1])
    tcg = node("tcg", free_mb=65536, caps=("uefi",))
    kvm = node("kvm", free_mb=2048, caps=("uefi", "kvm"))
    assert place(request(memory_mb=1024), [tcg, kvm]).name == "kvm"
    assert place(request(memory_mb=4096), [tcg, kvm]).name == "tcg", "room first"


def test_no_fit_is_refused_with_every_nodes_reason() -> None:
    nodes = [node("a", free_mb=1024), node("b", vcpus=1), node("c", state=NodeState.DOWN)]
    with pytest.raises(InsufficientResources) as refused:
        place(request(memory_mb=2048, cpus=2), nodes)
    assert refused.value.details["nodes"] == {
        "a": "1024 MiB free", "b": "1 vCPUs free", "c": "down"
    }  # fmt: skip
    with pytest.raises(InsufficientResources, match="lacks sev"):
        place(request(firmware="uefi", security={"memory_encryption": "sev"}), [node("a")])
    with pytest.raises(NodeNotFound):
        place(request(node="zz"), nodes)
    with pytest.raises(InsufficientResources, match="c: down"):
        place(request(node="c"), nodes)


async def test_a_single_host_refuses_another_node(client: Any) -> None:
    answer = await client.post("/api/v1/vms", json={"name": "v", "image": "tiny", "node": "far"})
    body = await answer.get_json()
    assert (answer.status_code, body["error"]["code"]) == (404, "NODE_NOT_FOUND"), body
