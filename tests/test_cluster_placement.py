"""Placement on create (cluster/placement.py): a node that is up, has the capabilities
and the firmware set the VM needs, a free GPU if it asks for one, and room for it; the
most free memory wins; a pinned node or a clear refusal naming every node's reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from hypermachine.cluster.placement import needs, place
from hypermachine.errors import InsufficientResources, NodeNotFound
from hypermachine.models import CreateVmRequest, FreeDevice, MdevType, Node, NodeState

GPU, NIC, IGPU = "0000:01:00.0", "0000:05:00.0", "0000:00:02.0"


def node(name: str, *, free_mb: int = 8192, vcpus: int = 8, caps: tuple[str, ...] = ("uefi",),
         state: NodeState = NodeState.UP, firmware: tuple[str, ...] = ("bios", "uefi"),
         devices: dict[str, str] | None = None, vgpus: dict[str, int] | None = None,
         ) -> Node:  # fmt: skip
    """A node's description; ``devices``: free PCI address -> kind; ``vgpus``: vGPU type
    of the parent IGPU -> instances left."""
    return Node.model_validate({
        "name": name, "url": f"http://{name}:8080", "state": state, "accelerator": "kvm",
        "qemu_version": "7.2", "capabilities": list(caps), "cpus": 8, "memory_mb": 16384,
        "free_vcpus": vcpus, "free_memory_mb": free_mb, "vms": 0, "live_vms": 0,
        "updated_at": datetime.now(UTC), "firmware": list(firmware),
        "free_devices": [FreeDevice(address=a, kind=k) for a, k in (devices or {}).items()],
        "vgpu_types": [
            MdevType(parent=IGPU, type=f"i915-{t}", name=t, description=None, device_api=None,
                     available_instances=left)
            for t, left in (vgpus or {}).items()
        ],
    })  # fmt: skip


def request(**fields: Any) -> CreateVmRequest:
    return CreateVmRequest.model_validate({"name": "v", "image": "tiny", **fields})


def refusals(asked: CreateVmRequest, nodes: list[Node]) -> Any:
    with pytest.raises(InsufficientResources) as refused:
        place(asked, nodes)
    return refused.value.details["nodes"]


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
    nodes = [node("big", free_mb=65536), node("gpu", caps=("uefi", "vfio"), devices={GPU: "gpu"})]
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


def test_the_firmware_set_the_vm_boots_from_must_be_there() -> None:
    secure = request(security={"secure_boot": True})
    assert [r.firmware_kind() for r in (secure, request(firmware="uefi"), request())] == [
        "uefi-secure-boot", "uefi", None
    ]  # fmt: skip
    sb = ("uefi", "secure_boot")
    plain = node("plain", free_mb=65536, caps=sb)  # its capabilities say yes, its sets no
    signed = node("signed", caps=sb, firmware=("bios", "uefi", "uefi-secure-boot"))
    assert place(secure, [plain, signed]).name == "signed"
    assert refusals(secure, [plain]) == {"plain": "lacks firmware uefi-secure-boot"}
    with pytest.raises(InsufficientResources, match="plain: lacks firmware uefi-secure-boot"):
        place(request(security={"secure_boot": True}, node="plain"), [plain, signed])

    old = node("old", firmware=())  # a description from before nodes listed their sets
    assert place(request(), [old]).name == "old", "the image's firmware is the node's choice"
    assert refusals(request(firmware="bios"), [old]) == {"old": "lacks firmware bios"}
    sev = request(firmware="uefi", security={"memory_encryption": "sev"})
    assert sev.firmware_kind() == "confidential"
    assert refusals(sev, [node("amd", caps=("uefi", "sev"))]) == {
        "amd": "lacks firmware confidential"
    }  # fmt: skip
    assert place(sev, [node("amd", caps=("uefi", "sev"), firmware=("confidential",))])


def test_a_gpu_must_be_free_on_the_node() -> None:
    vfio = ("uefi", "vfio")
    nodes = [
        node("x", caps=vfio, devices={GPU: "gpu"}),
        node("y", caps=vfio, free_mb=65536, devices={NIC: "nic"}),  # the operator allows it
        node("z", caps=vfio, free_mb=32768),  # its GPU is held
    ]
    assert place(request(gpu={"device": GPU}), nodes).name == "x"
    assert place(request(gpu={}), nodes).name == "x", "any GPU: not a NIC"
    assert place(request(gpu={"device": NIC}), nodes).name == "y"
    assert refusals(request(gpu={"device": GPU}), nodes[1:]) == {
        "y": f"no free device {GPU}", "z": f"no free device {GPU}"
    }  # fmt: skip
    assert refusals(request(gpu={}), nodes[1:]) == {"y": "no free GPU", "z": "no free GPU"}
    with pytest.raises(InsufficientResources, match=f"z: no free device {GPU}"):
        place(request(gpu={"device": GPU}, node="z"), nodes)


def test_a_vgpu_needs_an_instance_left_of_a_type_that_fits() -> None:
    vfio = ("uefi", "vfio")
    nodes = [node("v", caps=vfio, vgpus={"GVTg_V5_4": 2}), node("w", caps=vfio, free_mb=65536)]
    for profile in ("GVTg_V5_4", "i915-GVTg_V5_4"):  # its name or its type id
        assert place(request(gpu={"type": "vgpu", "profile": profile}), nodes).name == "v"
    assert place(request(gpu={"type": "vgpu", "device": IGPU}), nodes).name == "v"
    assert refusals(request(gpu={"type": "vgpu", "profile": "GVTg_V5_8"}), nodes) == {
        "v": "no free vGPU of type GVTg_V5_8", "w": "no free vGPU of type GVTg_V5_8"
    }  # fmt: skip
    other = "0000:00:03.0"
    assert refusals(request(gpu={"type": "vgpu", "device": other}), nodes[:1]) == {
        "v": f"no free vGPU on {other}"
    }  # fmt: skip
    spent = node("spent", caps=vfio, vgpus={"GVTg_V5_4": 0})
    assert refusals(request(gpu={"type": "vgpu"}), [spent]) == {"spent": "no free vGPU"}


async def test_a_single_host_refuses_another_node(client: Any) -> None:
    answer = await client.post("/api/v1/vms", json={"name": "v", "image": "tiny", "node": "far"})
    body = await answer.get_json()
    assert (answer.status_code, body["error"]["code"]) == (404, "NODE_NOT_FOUND"), body
