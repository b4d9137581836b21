"""The cluster operations: its nodes, moving a running VM (docs/cluster.md)."""

from __future__ import annotations

from ..cluster.etcd import EtcdError
from ..cluster.nodes import describe
from ..errors import (
    ClusterUnavailable,
    HypervisorError,
    InvalidState,
    MigrationRefused,
    NodeNotFound,
    VmNotFound,
)
from ..models import MigrateRequest, Migration, NodeList
from .declare import Access, Context, HttpRoute, Operation
from .inputs import MigrateVmInput, NoInput

__all__ = ["cluster_operations"]


async def _migrate_vm(ctx: Context, args: MigrateVmInput) -> Migration:
    migration: Migration = await ctx.services.manager.migrate(args.vm_id, args)
    return migration


async def _list_nodes(ctx: Context, args: NoInput) -> NodeList:
    services = ctx.services
    if services.cluster is None:
        settings = services.settings
        url = settings.advertise or f"http://{settings.host}:{settings.port}"
        here = await describe(services.manager, name=settings.node_name, url=url)
        return NodeList(nodes=[here], cluster=False)
    try:
        nodes = await services.cluster.nodes()
    except EtcdError as err:
        raise ClusterUnavailable(f"the cluster's nodes cannot be read: {err}") from err
    return NodeList(nodes=nodes, cluster=True)


def cluster_operations() -> list[Operation]:
    """The nodes and live migration."""
    return [
        Operation(
            name="list_nodes",
            title="List the cluster's nodes",
            summary=(
                "List the hosts of the cluster (one, for a single host): each node's state "
                "(up while its etcd lease lives, else down), accelerator, capabilities, "
                "CPUs and memory, what its admission budget has free, and its VM counts. "
                "Use to see where a VM could run."
            ),
            returns=(
                "{nodes: [{name, url, state, accelerator, capabilities, cpus, memory_mb, "
                "free_vcpus, free_memory_mb, firmware, free_devices, vgpu_types, vms, live_vms}], "
                "cluster}."
            ),
            input=NoInput,
            handler=_list_nodes,
            access=Access.KEY,
            resource="Node",
            result=NodeList,
            errors=(ClusterUnavailable,),
            http=HttpRoute("GET", "/api/v1/nodes"),
        ),
        Operation(
            name="migrate_vm",
            title="Live-migrate a VM",
            summary=(
                "Move a running or paused VM to another QEMU process while it runs, with "
                "its RAM, devices, vTPM and disk; without node (or with this node's name) "
                "to a fresh QEMU on the same host, e.g. after a QEMU upgrade. The guest "
                "pauses only for the last pass (downtime_ms). Refused when QEMU cannot "
                "migrate it (a VFIO device, memory encryption)."
            ),
            returns=(
                "{vm, source_node, node, total_time_ms, downtime_ms, setup_time_ms, "
                "transferred_bytes, switchover_ms}."
            ),
            input=MigrateVmInput,
            handler=_migrate_vm,
            access=Access.TENANT,
            resource="VirtualMachine",
            mutates=True,
            audit_details=lambda a: {"node": a.node},
            result=Migration,
            errors=(VmNotFound, NodeNotFound, InvalidState, MigrationRefused, HypervisorError),
            http=HttpRoute(
                "POST", "/api/v1/vms/{vm_id}/migrate", body=MigrateRequest, body_optional=True
            ),
        ),
    ]
