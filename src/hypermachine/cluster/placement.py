"""Where a new VM goes: a node that is up, has what the VM needs and room for it (pure).

Needs are read from the request: UEFI, secure boot, a vTPM, memory encryption, a GPU
(the node must have VFIO; which device is the node's own admission), shared storage
for a VM that restarts on node failure. Room is the
node's admission budget left (its last description, at most a beat old; the node
checks again when it starts the VM). Of the nodes that fit, a KVM node goes before a
TCG one (a spec does not name its accelerator, but a guest runs many times faster
under KVM), then the one with the most free memory (ties: the name, so the choice is
stable).
"""

from __future__ import annotations

from ..errors import InsufficientResources, NodeNotFound
from ..models import CreateVmRequest, Node, NodeState

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


def _unfit(request: CreateVmRequest, node: Node) -> str | None:
    if node.state is not NodeState.UP:
        return "down"
    missing = [need for need in needs(request) if need not in node.capabilities]
    if missing:
        return f"lacks {', '.join(missing)}"
    if node.free_memory_mb < request.memory_mb:
        return f"{node.free_memory_mb} MiB free"
    if node.free_vcpus < request.cpus:
        return f"{node.free_vcpus} vCPUs free"
    return None


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
