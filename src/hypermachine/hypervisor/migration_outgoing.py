"""Live migration of a running VM to another node: the source's side (docs/cluster.md).

The steps, each a ``vm.migration`` event (``step``) on this node:

1. **offer** — the destination is told the VM (its summary, and, when its folder is not
   on shared storage, how to remake it) and checks it can run it; the folder's fixed
   files (frozen layers, seed, VARS) are sent.
2. **destination_ready** — it started a QEMU ``-incoming defer`` waiting, over TLS
   with a key both derive from the cluster secret, for the stream (and for the disk
   copies over NBD).
3. **disks_copied** (not shared) — mirrors of the written top layer and the VARS are
   ``ready``: copied, and every new write copied too.
4. **streamed** — RAM and devices sent while the guest runs; it pauses for the last
   pass; the mirrors end.
5. **handed_over** — one compare-and-swap in etcd makes the destination the owner;
   before it, any failure ends the destination and lets the guest go on here; after
   it, the VM is the destination's whatever happens (it runs it once told, or by
   itself when its wait ends and etcd names it).
6. **completed** — the destination runs it; this node's QEMU is quit and its record
   (and, not shared, its files) dropped. The event carries QEMU's figures.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from ..config import Settings
from ..errors import ClusterUnavailable, HMError, MigrationRefused
from ..events import EventLog
from ..models import DiskPlan, EventType, IncomingOffer, Migration, Vm, VmState
from ..store import Store
from . import crossnode, migration
from .devices.resources import HostResources
from .platform import tpm
from .ports import CatalogueLike, PeersLike
from .qemu import qmp_commands
from .qemu.machine import Machine
from .snapshot_service import SnapshotService
from .vmfiles import nofollow
from .vmfiles.confine import QemuIdentity
from .vmfiles.layout import VmPaths

__all__ = ["OutgoingHost", "to_node"]

log = logging.getLogger(__name__)

_COMMIT_TRIES = 5


class OutgoingHost(Protocol):
    """The manager as a migration's source sees it."""

    _settings: Settings
    _store: Store
    _catalogue: CatalogueLike
    _resources: HostResources
    events: EventLog
    qemu_identity: QemuIdentity | None
    snapshots: SnapshotService
    peers: PeersLike | None

    def _paths(self, vm_id: str) -> VmPaths: ...
    def forget_moved(self, vm_id: str, *, files: bool) -> None: ...


async def _plan(mgr: OutgoingHost, vm: Vm, paths: VmPaths) -> DiskPlan | None:
    """How the destination remakes the folder (its snapshots too); None when it is on
    shared storage.

    Raises:
        MigrationRefused: a disk this server cannot copy.
    """
    if vm.restart_policy == "on_node_failure":
        return None
    image = mgr._catalogue.get(vm.image)
    digest = None if image.disk is None else await crossnode.image_digest(image.disk, image.sha256)
    fmt = None if image.disk is None else image.format
    return crossnode.disk_plan(paths, digest, fmt)


@dataclass
class _Move:
    """One migration to another node, as the source runs it."""

    mgr: OutgoingHost
    peers: PeersLike
    vm: Vm
    source: Machine
    node: str
    url: str
    plan: DiskPlan | None
    token: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def paths(self) -> VmPaths:
        return self.mgr._paths(self.vm.id)

    @property
    def psk_dir(self) -> Path:
        return self.paths.run_dir / f"tls-{self.token[:8]}"

    @property
    def mirrored(self) -> list[str]:
        return self.plan.mirrored if self.plan is not None else []

    def step(self, step: str, **data: Any) -> None:
        self.mgr.events.record(EventType.MIGRATION_STEP, self.vm.id, step=step, **data)

    async def send(self) -> qmp_commands.MigrationStatus:
        """Everything before the hand-over: the offer, the files, the disk copies, the
        stream. Returns QEMU's figures (the guest is paused on this node)."""
        peers, settings, vm = self.peers, self.mgr._settings, self.vm
        await peers.offer(self.url, IncomingOffer(
            token=self.token, source_node=peers.node, vm=vm, disk=self.plan
        ))  # fmt: skip
        for name in self.plan.files if self.plan is not None else {}:
            *inside, leaf = name.split("/")  # never through a link the guest's user made
            parent = self.paths.vm_dir.joinpath(*inside)
            with nofollow.Folder(parent) as folder, folder.open(leaf) as file:
                await peers.upload(self.url, self.token, name, file)
        crossnode.write_psk(self.psk_dir, peers.psk(self.token, vm.uuid), self.mgr.qemu_identity)
        ports = await peers.open(self.url, self.token)
        self.step("destination_ready", node=self.node)
        await crossnode.load_key(self.source, self.psk_dir)
        budget = settings.migration_timeout_s
        if ports.nbd_port is not None:
            await crossnode.start_mirrors(
                self.source, ports.host, ports.nbd_port, self.mirrored, budget
            )
            self.step("disks_copied", node=self.node)
        sent = await crossnode.send_state(
            self.source, self.node, ports.host, ports.migration_port,
            bandwidth_mib_s=settings.migration_bandwidth_mib_s, timeout_s=budget,
        )  # fmt: skip
        if self.mirrored:
            await crossnode.finish_mirrors(self.source, self.mirrored, budget)
        self.step("streamed", node=self.node)
        return sent

    async def undo(self, err: BaseException) -> None:
        """Before the hand-over: end the destination, let the guest go on here."""
        with contextlib.suppress(HMError):
            await self.peers.abort(self.url, self.token)
        if not self.source.exited.is_set():
            await crossnode.undo_sending(self.source, self.mirrored)
        await migration.resume_source(self.source, self.vm)
        self.step("failed", reason=err.message if isinstance(err, HMError) else repr(err))
        shutil.rmtree(self.psk_dir, ignore_errors=True)


async def to_node(mgr: OutgoingHost, vm: Vm, source: Machine, node: str) -> Migration:
    """Move ``vm`` (its QEMU: ``source``) to ``node`` while it runs.

    Raises:
        NodeNotFound, ClusterUnavailable, MigrationRefused, HypervisorError.
    """
    peers = mgr.peers
    if peers is None:
        raise MigrationRefused(
            "this node cannot migrate to another: it has no cluster secret",
            reasons=["no cluster secret"],
        )
    url = await peers.url_of(node)
    paths = mgr._paths(vm.id)
    old_tpm = tpm.state_dir_of(paths.vm_dir)  # the destination names its own at commit
    move = _Move(mgr, peers, vm, source, node, url, await _plan(mgr, vm, paths))
    move.step("started", node=peers.node, to_node=node, shared=move.plan is None)
    try:
        sent = await move.send()
        streamed = trio.current_time()
        await _hand_over(peers, vm.id, node)
    except BaseException as err:
        with trio.CancelScope(shield=True):
            await move.undo(err)
        raise
    with trio.CancelScope(shield=True):  # the VM is the destination's now: finish
        move.step("handed_over", node=node)
        moved = await _commit(peers, url, move.token, vm, node)
        switchover_ms = (trio.current_time() - streamed) * 1000
        await _retire(mgr, vm, source, paths, old_tpm, shared=move.plan is None)
    answer, data = migration.finished(
        moved, migration.Figures.of(sent), source_node=peers.node, node=node,
        switchover_ms=switchover_ms,
    )  # fmt: skip
    move.step("completed", **data)
    return answer


async def _hand_over(peers: PeersLike, vm_id: str, node: str) -> None:
    """Make ``node`` the owner in etcd.

    Raises:
        MigrationRefused: this node is no longer the owner. ClusterUnavailable: etcd
            cannot say who owns the VM.
    """
    if not await peers.hand_over(vm_id, node):
        raise MigrationRefused("this node no longer owns the VM", reasons=["ownership lost"])


async def _commit(peers: PeersLike, url: str, token: str, vm: Vm, node: str) -> Vm:
    """Tell the destination to run the VM; if it cannot be told, it runs it by itself
    when its wait ends (etcd names it): the summary then says so."""
    for attempt in range(_COMMIT_TRIES):
        try:
            return await peers.commit(url, token)
        except ClusterUnavailable as err:
            log.warning("%s: node %s did not confirm (try %d): %s", vm.id, node, attempt, err)
            await trio.sleep(0.5 * (attempt + 1))
        except MigrationRefused as err:
            log.error("%s: node %s refused to run it after the hand-over: %s", vm.id, node, err)
            break
    reason = f"handed over to node {node}, which has not confirmed yet"
    return vm.model_copy(update={"node": node, "state": VmState.UNKNOWN, "state_reason": reason})


async def _retire(
    mgr: OutgoingHost, vm: Vm, source: Machine, paths: VmPaths, old_tpm: Path, *, shared: bool
) -> None:
    """Quit the source QEMU without its exit changing anything; drop the record here."""
    source.report.handed_over = True
    await source.terminate(mgr._settings.kill_grace_s)
    await source.finished.wait()
    tpm.stop(tpm.TpmPaths.for_vm(paths, old_tpm))
    await mgr._resources.release(vm, paths)
    if shared and vm.security.vtpm:  # the destination has its own state dir beside it
        shutil.rmtree(old_tpm, ignore_errors=True)
    mgr.forget_moved(vm.id, files=not shared)
    await mgr.snapshots.count_storage(vm.tenant)  # its folder left this node
