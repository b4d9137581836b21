"""The snapshot, restore, fork and hibernate operations (docs/snapshots.md).

Each handler calls the manager, which delegates to its snapshot service; REST
statuses come back as :class:`~.declare.Answer` (a snapshot still being written is
202, a restore still running is 202, deletes are 204).
"""

from __future__ import annotations

from typing import Any

from ..errors import (
    AddressInUse,
    ClusterUnavailable,
    HypervisorError,
    InvalidState,
    NameTaken,
    PortInUse,
    QuotaExceeded,
    SnapshotNotFound,
    SnapshotRefused,
    VmNotFound,
)
from ..models import (
    CreateFromSnapshotRequest,
    ForkRequest,
    ForkResult,
    RestoreRequest,
    Snapshot,
    SnapshotList,
    SnapshotRequest,
    Vm,
    VmState,
)
from .declare import Access, Answer, Context, HttpRoute, Operation
from .inputs import (
    DEFAULT_WAIT_S,
    ForkVmInput,
    RestoreSnapshotInput,
    SnapshotNameInput,
    TakeSnapshotInput,
    VmIdInput,
)

__all__ = ["snapshot_operations"]

_VM = "/api/v1/vms/{vm_id}"
_SNAPSHOT = f"{_VM}/snapshots/{{name}}"
_VM_RETURNS = "the VM object (id, name, state, state_reason, spec, pid, timestamps)."
_REFUSALS = (VmNotFound, InvalidState, SnapshotRefused, QuotaExceeded, HypervisorError)


async def _take_snapshot(ctx: Context, args: TakeSnapshotInput) -> Answer:
    snapshot: Snapshot = await ctx.services.manager.snapshot(args.vm_id, args)
    location = f"/api/v1/vms/{args.vm_id}/snapshots/{args.name}"
    status = 201 if snapshot.complete else 202
    return Answer(snapshot, status=status, headers={"Location": location})


async def _list_snapshots(ctx: Context, args: VmIdInput) -> SnapshotList:
    return SnapshotList(snapshots=list(ctx.services.manager.list_snapshots(args.vm_id)))


async def _get_snapshot(ctx: Context, args: SnapshotNameInput) -> Snapshot:
    snapshot: Snapshot = ctx.services.manager.get_snapshot(args.vm_id, args.name)
    return snapshot


async def _delete_snapshot(ctx: Context, args: SnapshotNameInput) -> Answer:
    await ctx.services.manager.delete_snapshot(args.vm_id, args.name)
    return Answer({"deleted": True, "vm_id": args.vm_id, "name": args.name}, status=204)


async def _restore_snapshot(ctx: Context, args: RestoreSnapshotInput) -> Answer:
    vm: Vm = await ctx.services.manager.restore(args.vm_id, args.name, wait=args.wait)
    return Answer(vm, status=202 if vm.state is VmState.RESTORING else 200)


async def _fork_vm(ctx: Context, args: ForkVmInput) -> Answer:
    children = await ctx.services.manager.fork(args.vm_id, args)
    return Answer(ForkResult(vms=list(children)), status=201)


async def _hibernate_vm(ctx: Context, args: VmIdInput) -> Vm:
    vm: Vm = await ctx.services.manager.hibernate(args.vm_id)
    return vm


async def _create_vm_from_snapshot(ctx: Context, args: CreateFromSnapshotRequest) -> Answer:
    manager = ctx.services.manager
    vm: Vm = await manager.create_from_snapshot(args)
    if args.wait and args.start:
        vm = await manager.wait_started(vm.id, DEFAULT_WAIT_S)
    return Answer(vm, status=201, headers={"Location": f"/api/v1/vms/{vm.id}"}, target=vm.id)


def _tenant(**kw: Any) -> Operation:
    """A snapshot operation: the VM's tenant only; everything but reads is audited."""
    return Operation(access=Access.TENANT, resource="VirtualMachine", **kw)


def snapshot_operations() -> list[Operation]:
    """The snapshot, restore, fork and hibernate operations, in the order tools list them."""
    return [
        _tenant(
            name="take_snapshot",
            title="Snapshot a VM",
            summary=(
                "Save a VM's disk and, with memory=true for a running or paused VM, its RAM "
                "and device state, under a name. The VM keeps running (paused only while RAM "
                "is written). A stopped VM gets a disk-only snapshot. Use before a risky step."
            ),
            returns="{name, vm_id, created_at, memory, size_bytes, vm_state}.",
            input=TakeSnapshotInput,
            handler=_take_snapshot,
            mutates=True,
            result=Snapshot,
            errors=(*_REFUSALS, NameTaken, ClusterUnavailable),
            http=HttpRoute(
                "POST", f"{_VM}/snapshots", status=201, body=SnapshotRequest, also=(202,)
            ),
        ),
        _tenant(
            name="list_snapshots",
            title="List a VM's snapshots",
            summary="List the complete snapshots of a VM, oldest first.",
            returns="{snapshots: [{name, created_at, memory, size_bytes, vm_state}]}.",
            input=VmIdInput,
            handler=_list_snapshots,
            result=SnapshotList,
            errors=(VmNotFound,),
            idempotent=True,
            http=HttpRoute("GET", f"{_VM}/snapshots"),
        ),
        _tenant(
            name="get_snapshot",
            title="Get a snapshot",
            summary="Read one snapshot of a VM.",
            returns="{name, vm_id, created_at, memory, size_bytes, vm_state}.",
            input=SnapshotNameInput,
            handler=_get_snapshot,
            result=Snapshot,
            errors=(VmNotFound, SnapshotNotFound),
            idempotent=True,
            http=HttpRoute("GET", _SNAPSHOT),
        ),
        _tenant(
            name="delete_snapshot",
            title="Delete a snapshot",
            summary="Delete one snapshot of a VM for good (the VM itself is untouched).",
            returns="{deleted: true, vm_id, name}.",
            input=SnapshotNameInput,
            handler=_delete_snapshot,
            mutates=True,
            errors=(VmNotFound, SnapshotNotFound),
            destructive=True,
            http=HttpRoute("DELETE", _SNAPSHOT, status=204),
        ),
        _tenant(
            name="restore_snapshot",
            title="Restore a snapshot",
            summary=(
                "Return a VM to a snapshot: its disk, and for a memory snapshot its RAM, so "
                "its processes carry on from that point (running or paused, as it was). "
                "What happened since is lost."
            ),
            returns=_VM_RETURNS,
            input=RestoreSnapshotInput,
            handler=_restore_snapshot,
            mutates=True,
            result=Vm,
            errors=(*_REFUSALS, SnapshotNotFound),
            destructive=True,
            http=HttpRoute(
                "POST", f"{_SNAPSHOT}/restore", body=RestoreRequest, body_optional=True, also=(202,)
            ),
        ),
        _tenant(
            name="fork_vm",
            title="Fork a VM",
            summary=(
                "Make count new VMs that carry on from a VM's memory state (a named memory "
                "snapshot, or an instant one), each with its own disk overlay, id, UUID, MAC "
                "and VM generation id. Forwarded ports are remapped (see network_info)."
            ),
            returns="{vms: [VM objects]}.",
            input=ForkVmInput,
            handler=_fork_vm,
            mutates=True,
            result=ForkResult,
            errors=(
                *_REFUSALS,
                SnapshotNotFound,
                NameTaken,
                AddressInUse,
                PortInUse,
                ClusterUnavailable,
            ),
            http=HttpRoute("POST", f"{_VM}/fork", status=201, body=ForkRequest),
        ),
        _tenant(
            name="hibernate_vm",
            title="Hibernate a VM",
            summary=(
                "Save a running or paused VM's RAM to disk and end its QEMU, freeing its "
                "memory; state 'hibernated'. start_vm resumes it where it was."
            ),
            returns=_VM_RETURNS,
            input=VmIdInput,
            handler=_hibernate_vm,
            mutates=True,
            result=Vm,
            errors=(*_REFUSALS, ClusterUnavailable),
            http=HttpRoute("POST", f"{_VM}/hibernate"),  # answered once hibernated
        ),
        Operation(
            name="create_vm_from_snapshot",
            title="Create a VM from a snapshot",
            summary=(
                "Create a VM from another VM's snapshot (a template), with the parent's spec "
                "and a new id, UUID, MAC and generation id; start=true resumes it at once."
            ),
            returns=_VM_RETURNS,
            input=CreateFromSnapshotRequest,
            handler=_create_vm_from_snapshot,
            access=Access.KEY,  # the parent is found in the caller's scope by the manager
            mutates=True,
            audit_details=lambda a: {"from": a.from_snapshot.model_dump()},
            result=Vm,
            errors=(
                VmNotFound,
                SnapshotNotFound,
                NameTaken,
                AddressInUse,
                QuotaExceeded,
                ClusterUnavailable,
                HypervisorError,
            ),
            # REST: POST /api/v1/vms with from_snapshot (create_vm's route, another body).
            http=None,
        ),
    ]
