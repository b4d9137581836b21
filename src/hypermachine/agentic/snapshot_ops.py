"""The snapshot operations agents get (docs/snapshots.md): each handler calls the same
:class:`~hypermachine.hypervisor.manager.Manager` method as ``api/snapshots.py``."""

from __future__ import annotations

from typing import Any

from ..errors import (
    AddressInUse,
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
    LifecycleRequest,
    RestoreRequest,
    Snapshot,
    SnapshotList,
    SnapshotRequest,
    Vm,
    VmState,
)
from .inputs import (
    DEFAULT_WAIT_S,
    ForkVmInput,
    RestoreSnapshotInput,
    SnapshotNameInput,
    TakeSnapshotInput,
    VmIdInput,
)
from .registry import HttpRoute, Operation

__all__ = ["snapshot_operations"]

_VM = "/api/v1/vms/{vm_id}"
_SNAPSHOT = f"{_VM}/snapshots/{{name}}"
_VM_RETURNS = "the VM object (id, name, state, state_reason, spec, pid, timestamps)."


async def _take_snapshot(svc: Any, args: TakeSnapshotInput) -> Snapshot:
    request = SnapshotRequest.model_validate(args.model_dump(exclude={"vm_id"}))
    snapshot: Snapshot = await svc.manager.snapshot(args.vm_id, request)
    return snapshot


async def _list_snapshots(svc: Any, args: VmIdInput) -> SnapshotList:
    return SnapshotList(snapshots=list(svc.manager.list_snapshots(args.vm_id)))


async def _get_snapshot(svc: Any, args: SnapshotNameInput) -> Snapshot:
    snapshot: Snapshot = svc.manager.get_snapshot(args.vm_id, args.name)
    return snapshot


async def _delete_snapshot(svc: Any, args: SnapshotNameInput) -> dict[str, Any]:
    await svc.manager.delete_snapshot(args.vm_id, args.name)
    return {"deleted": True, "vm_id": args.vm_id, "name": args.name}


async def _restore_snapshot(svc: Any, args: RestoreSnapshotInput) -> Vm:
    vm: Vm = await svc.manager.restore(args.vm_id, args.name, wait=args.wait)
    return vm


async def _fork_vm(svc: Any, args: ForkVmInput) -> ForkResult:
    request = ForkRequest.model_validate(args.model_dump(exclude={"vm_id"}))
    return ForkResult(vms=list(await svc.manager.fork(args.vm_id, request)))


async def _hibernate_vm(svc: Any, args: VmIdInput) -> Vm:
    vm: Vm = await svc.manager.hibernate(args.vm_id)
    return vm


async def _create_vm_from_snapshot(svc: Any, args: CreateFromSnapshotRequest) -> Vm:
    vm: Vm = await svc.manager.create_from_snapshot(args)
    if args.wait and args.start:
        vm = await svc.manager.wait_for(vm.id, {VmState.RUNNING, VmState.PAUSED}, DEFAULT_WAIT_S)
    return vm


_REFUSALS = (VmNotFound, InvalidState, SnapshotRefused, QuotaExceeded, HypervisorError)


def snapshot_operations() -> list[Operation]:
    """The snapshot, restore, fork and hibernate operations, in the order tools list them."""
    return [
        Operation(
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
            result=Snapshot,
            errors=(*_REFUSALS, NameTaken),
            http=HttpRoute(
                "POST", f"{_VM}/snapshots", status=201, body=SnapshotRequest, also=(202,)
            ),
        ),
        Operation(
            name="list_snapshots",
            title="List a VM's snapshots",
            summary="List the complete snapshots of a VM, oldest first.",
            returns="{snapshots: [{name, created_at, memory, size_bytes, vm_state}]}.",
            input=VmIdInput,
            handler=_list_snapshots,
            result=SnapshotList,
            errors=(VmNotFound,),
            read_only=True,
            idempotent=True,
            http=HttpRoute("GET", f"{_VM}/snapshots"),
        ),
        Operation(
            name="get_snapshot",
            title="Get a snapshot",
            summary="Read one snapshot of a VM.",
            returns="{name, vm_id, created_at, memory, size_bytes, vm_state}.",
            input=SnapshotNameInput,
            handler=_get_snapshot,
            result=Snapshot,
            errors=(VmNotFound, SnapshotNotFound),
            read_only=True,
            idempotent=True,
            http=HttpRoute("GET", _SNAPSHOT),
        ),
        Operation(
            name="delete_snapshot",
            title="Delete a snapshot",
            summary="Delete one snapshot of a VM for good (the VM itself is untouched).",
            returns="{deleted: true, vm_id, name}.",
            input=SnapshotNameInput,
            handler=_delete_snapshot,
            errors=(VmNotFound, SnapshotNotFound),
            destructive=True,
            http=HttpRoute("DELETE", _SNAPSHOT, status=204),
        ),
        Operation(
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
            result=Vm,
            errors=(*_REFUSALS, SnapshotNotFound),
            destructive=True,
            http=HttpRoute(
                "POST", f"{_SNAPSHOT}/restore", body=RestoreRequest, body_optional=True, also=(202,)
            ),
        ),
        Operation(
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
            result=ForkResult,
            errors=(*_REFUSALS, SnapshotNotFound, NameTaken, AddressInUse, PortInUse),
            http=HttpRoute("POST", f"{_VM}/fork", status=201, body=ForkRequest),
        ),
        Operation(
            name="hibernate_vm",
            title="Hibernate a VM",
            summary=(
                "Save a running or paused VM's RAM to disk and end its QEMU, freeing its "
                "memory; state 'hibernated'. start_vm resumes it where it was."
            ),
            returns=_VM_RETURNS,
            input=VmIdInput,
            handler=_hibernate_vm,
            result=Vm,
            errors=_REFUSALS,
            http=HttpRoute("POST", f"{_VM}/hibernate", body=LifecycleRequest, body_optional=True),
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
            result=Vm,
            errors=(VmNotFound, SnapshotNotFound, NameTaken, AddressInUse, HypervisorError),
            # REST: POST /api/v1/vms with from_snapshot (create_vm's route, another body).
            http=None,
        ),
    ]
