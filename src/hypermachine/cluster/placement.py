"""Where a new VM goes: a node that is up, has what the VM needs and room for it (pure).

Needs are read from the request: UEFI, secure boot, a vTPM, memory encryption, a GPU
(the node must have VFIO), shared storage for a VM that restarts on node failure; the
firmware set it boots from (``uefi``, ``uefi-secure-boot`` for secure boot,
``confidential`` for memory encryption, ``bios``); and, for a GPU, a free one on the
node: the named PCI device, any free GPU, or an instance left of a vGPU type that fits.
Room and free GPUs are the node's last description (at most a beat old; the node
checks again when it starts the VM). Of the nodes that fit, a KVM node goes before a
TCG one (a spec does not name its accelerator, but a guest runs many times faster
under KVM), then the one with the most free memory (ties: the name, so the choice is
stable).
"""

from __future__ import annotations

from ..errors import InsufficientResources, NodeNotFound
from ..models import CreateVmRequest, GpuSpec, Node, NodeState

__all__ = ["needs", "place"]


def needs(request: CreateVmRequest) -> list[str]:
    """The node capabilities ``request`` cannot run without."""
    wanted = []
    if request.firmware == "uefi" or request.security.secure_boot:
        wanted.append("uefi")
    if request.security.secure_boot:
        wanted.append("secure_boot")
    if request.security.vtpm:
        wanted.append("vtpm")
    if request.security.memory_encryption != "none":
        wanted.append(request.security.memory_encryption)
    if request.gpu.enabled:
        wanted.append("vfio")
    if request.restart_policy == "on_node_failure":
        wanted.append("shared_storage")
    return wanted


def _no_vgpu(gpu: GpuSpec, node: Node) -> str | None:
    if any(kind.available_instances > 0 and kind.fits(gpu) for kind in node.vgpu_types):
        return None
    of_type = f" of type {gpu.profile}" if gpu.profile is not None else ""
    on_parent = f" on {gpu.device}" if gpu.device is not None else ""
    return f"no free vGPU{of_type}{on_parent}"


def _no_gpu(gpu: GpuSpec, node: Node) -> str | None:
    """Why ``node`` has no GPU for ``gpu`` now, or None (also when none is asked for)."""
    if not gpu.enabled:
        return None
    if gpu.type == "vgpu":
        return _no_vgpu(gpu, node)
    if gpu.device is not None:
        free = {device.address for device in node.free_devices}
        return None if gpu.device in free else f"no free device {gpu.device}"
    return None if any(d.kind == "gpu" for d in node.free_devices) else "no free GPU"


def _unfit(request: CreateVmRequest, node: Node) -> str | None:
    if node.state is not NodeState.UP:
        return "down"
    missing = [need for need in needs(request) if need not in node.capabilities]
    if missing:
        return f"lacks {', '.join(missing)}"
    firmware = request.firmware_kind()
    if firmware is not None and firmware not in node.firmware:
        return f"lacks firmware {firmware}"
    if node.free_memory_mb < request.memory_mb:
        return f"{node.free_memory_mb} MiB free"
    if node.free_vcpus < request.cpus:
        return f"{node.free_vcpus} vCPUs free"
    return _no_gpu(request.gpu, node)


def place(request: CreateVmRequest, nodes: list[Node]) -> Node:
    """The node ``request`` is created on: its pinned ``node``, or the best fit.

    Raises:
        NodeNotFound: a pinned node that does not exist.
        InsufficientResources: no node (or not the pinned one) can run it; details
            say why for each.
    """
    if request.node is not None:
        pinned = [node for node in nodes if node.name == request.node]
        if not pinned:
            raise NodeNotFound(f"no node {request.node!r} in the cluster", node=request.node)
        nodes = pinned
    reasons = {node.name: _unfit(request, node) for node in nodes}
    fits = [node for node in nodes if reasons[node.name] is None]
    if not fits:
        raise InsufficientResources(
            "no node of the cluster can run this VM: "
            + "; ".join(f"{name}: {why}" for name, why in sorted(reasons.items())),
            nodes=reasons,
        )
    return min(fits, key=lambda n: ("kvm" not in n.capabilities, -n.free_memory_mb, n.name))
