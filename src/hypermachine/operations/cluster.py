"""The cluster operations: moving a running VM (docs/cluster.md)."""

from __future__ import annotations

from ..errors import HypervisorError, InvalidState, MigrationRefused, NodeNotFound, VmNotFound
from ..models import MigrateRequest, Migration
from .declare import Access, Context, HttpRoute, Operation
from .inputs import MigrateVmInput

__all__ = ["cluster_operations"]


async def _migrate_vm(ctx: Context, args: MigrateVmInput) -> Migration:
    migration: Migration = await ctx.services.manager.migrate(args.vm_id, args)
    return migration


def cluster_operations() -> list[Operation]:
    """Live migration (nodes come with the cluster)."""
    return [
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
