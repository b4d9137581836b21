"""Live migration from another node: the destination's side (docs/cluster.md).

A source node offers the VM (:meth:`IncomingMigrations.offer`), sends the folder's fixed
files when its storage is not shared (:meth:`~IncomingMigrations.receive`), asks for a
QEMU waiting for the stream (:meth:`~IncomingMigrations.open`) and, once the stream is
complete and etcd names this node the owner, tells it to run the VM
(:meth:`~IncomingMigrations.commit`); or gives up (:meth:`~IncomingMigrations.abort`).

This node runs the VM only when etcd names it the owner. A source that goes quiet
before telling it is settled by etcd as well: when the wait ends, the destination runs
the VM if the key names it, and discards itself otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import trio

from ..config import Settings
from ..errors import HMError, MigrationRefused, NameTaken, NotFound
from ..events import EventLog
from ..models import EventType, IncomingOffer, IncomingPorts, Vm, VmState
from ..security.admission import HostBudget, admit
from ..states import LIVE_STATES
from ..store import Store
from . import crossnode
from .devices import network
from .devices.resources import HostResources
from .platform import tpm
from .platform.host import HostFacts, check_supported
from .ports import CatalogueLike, LiveCountLike, PeersLike
from .qemu import qmp_commands
from .qemu.machine import Machine
from .snapshot_service import SnapshotService
from .standby import Standbys
from .storage.layers import TOP
from .storage.snapshots import wait_migration
from .vmfiles import nofollow
from .vmfiles.confine import QemuIdentity
from .vmfiles.layout import VmPaths

__all__ = ["IncomingHost", "IncomingMigrations"]

log = logging.getLogger(__name__)


class _Destination(Protocol):
    async def destination_qemu(
        self, vm: Vm, paths: VmPaths, tpm_dir: Path | None, nic: socket.socket | None
    ) -> Machine: ...


class IncomingHost(Protocol):
    """The manager as a migration's destination sees it."""

    _settings: Settings
    _store: Store
    _catalogue: CatalogueLike
    _resources: HostResources
    _budget: HostBudget
    events: EventLog
    host: HostFacts
    qemu_identity: QemuIdentity | None
    peers: PeersLike | None
    live_count: LiveCountLike | None
    snapshots: SnapshotService
    standbys: Standbys

    @property
    def migrations(self) -> _Destination: ...

    @property
    def shared_storage(self) -> bool: ...
    def paths_of(self, vm: Vm) -> VmPaths: ...
    def _spawn(self, vm_id: str, fn: Any, *args: Any) -> None: ...
    async def _supervise(self, machine: Machine) -> None: ...
    def _announce(self) -> None: ...
    def _live(self, vm: Vm) -> Vm: ...


@dataclass
class _Incoming:
    offer: IncomingOffer
    record: Vm  # the VM as this node will hold it
    paths: VmPaths
    made_folder: bool
    tpm_dir: Path | None
    psk_dir: Path
    received: dict[str, int] = field(default_factory=dict)
    dest: Machine | None = None
    passt_end: socket.socket | None = None
    settled: trio.Event = field(default_factory=trio.Event)


_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def _folder_path(name: str) -> bool:
    """A plain path inside a VM's folder: a few parts, none empty, hidden or ``..``."""
    parts = name.split("/")
    return len(parts) <= 4 and all(_PART.fullmatch(part) for part in parts)


class IncomingMigrations:
    """The migrations this node is the destination of, by token."""

    def __init__(self, manager: IncomingHost) -> None:
        self._mgr = manager
        self._pending: dict[str, _Incoming] = {}

    def _get(self, token: str) -> _Incoming:
        found = self._pending.get(token)
        if found is None:
            raise NotFound(f"no migration {token!r} is coming to this node", token=token)
        return found

    def _step(self, vm_id: str, step: str, **data: Any) -> None:
        self._mgr.events.record(EventType.MIGRATION_STEP, vm_id, step=step, **data)

    # -- the steps ----------------------------------------------------------------

    async def offer(self, offer: IncomingOffer) -> None:
        """Check this node can run the VM and make room for its files.

        Raises:
            MigrationRefused: it cannot (why), or the VM is here already.
        """
        mgr, vm = self._mgr, offer.vm
        try:
            await self._check(offer)
        except MigrationRefused:
            raise
        except HMError as err:
            raise MigrationRefused(err.message, reasons=[err.message]) from err
        here = mgr._settings.node_name
        record = vm.model_copy(update={"node": here, "state_reason": None})
        paths = mgr.paths_of(record)
        made = offer.disk is not None
        if made:
            if paths.vm_dir.exists():
                raise MigrationRefused(f"VM {vm.id} has a folder on this node already")
            paths.make()
        else:
            paths.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        short = offer.token[:8]
        tpm_dir = paths.vm_dir / f"tpm-{short}" if vm.security.vtpm else None
        self._pending[offer.token] = _Incoming(
            offer, record, paths, made, tpm_dir, paths.run_dir / f"tls-{short}"
        )
        self._step(vm.id, "offered", source_node=offer.source_node)

    async def _check(self, offer: IncomingOffer) -> None:
        mgr, vm = self._mgr, offer.vm
        if offer.token in self._pending or any(
            p.offer.vm.id == vm.id for p in self._pending.values()
        ):
            raise MigrationRefused(f"VM {vm.id} is already coming to this node")
        others = list(mgr._store.all_vms())
        known = {(other.tenant, other.name): other.id for other in others}
        if vm.id in known.values():
            raise MigrationRefused(f"VM {vm.id} is on this node already")
        if (vm.tenant, vm.name) in known:
            raise NameTaken(f"tenant {vm.tenant!r} has a VM named {vm.name!r} here", name=vm.name)
        check_supported(vm, mgr.host)
        blockers = mgr._resources.unsupported(vm)
        if blockers:
            reasons = [f"{field}: {why}" for field, why in blockers.items()]
            raise MigrationRefused("this node cannot run the VM: " + "; ".join(reasons))
        if vm.network_info is not None:  # its static IP, its MAC: not another VM's here
            network.check_conflicts(vm.network_info, vm.id, others)
        live = [other for other in others if other.state in LIVE_STATES]
        await mgr.standbys.make_room(lambda budget: admit(vm, live, quota=0, budget=budget))
        image = mgr._catalogue.get(vm.image)
        if not image.available:
            raise MigrationRefused(f"image {vm.image!r} is not on this node")
        if offer.disk is not None and not all(map(_folder_path, offer.disk.files)):
            raise MigrationRefused("the offer names a file outside the VM's folder")
        if offer.disk is None:
            if not (mgr.shared_storage and vm.restart_policy == "on_node_failure"):
                raise MigrationRefused("this node does not see the VM's shared storage")
            if not mgr.paths_of(vm).disk.exists():
                raise MigrationRefused("the VM's disk is not on this node's shared storage")
            return
        wanted = offer.disk.image_sha256
        if wanted is not None and (
            image.disk is None or await crossnode.image_digest(image.disk, None) != wanted
        ):
            raise MigrationRefused(f"image {vm.image!r} differs on this node (sha256)")

    async def receive(self, token: str, name: str, offset: int, data: bytes) -> None:
        """Write a chunk of one of the offered files.

        Raises:
            NotFound: no such migration. MigrationRefused: a file it did not offer, or
                a chunk out of place.
        """
        incoming = self._get(token)
        plan = incoming.offer.disk
        size = plan.files.get(name) if plan is not None else None
        if size is None or not _folder_path(name) or name in (plan.top if plan else "", TOP):
            raise MigrationRefused(f"file {name!r} is not part of this migration")
        if offset != incoming.received.get(name, 0) or offset + len(data) > size:
            raise MigrationRefused(f"chunk at {offset} of {name!r} is out of place")
        *inside, leaf = name.split("/")
        parent = incoming.paths.vm_dir.joinpath(*inside)
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a folder this node made
        flags = os.O_WRONLY | (os.O_CREAT | os.O_EXCL if offset == 0 else 0)
        with nofollow.Folder(parent) as folder, folder.open(leaf, flags) as file:
            file.seek(offset)
            file.write(data)
        incoming.received[name] = offset + len(data)

    async def open(self, token: str) -> IncomingPorts:
        """Start the QEMU that waits for the VM; where it waits.

        Raises:
            NotFound, MigrationRefused (files missing), HMError (QEMU would not start).
        """
        mgr, incoming = self._mgr, self._get(token)
        plan, vm = incoming.offer.disk, incoming.record
        if plan is not None:
            missing = [n for n, size in plan.files.items() if incoming.received.get(n) != size]
            if missing:
                raise MigrationRefused(f"files not received: {', '.join(sorted(missing))}")
            image = mgr._catalogue.get(vm.image)
            await crossnode.remake_disk(
                mgr._settings.qemu_img_binary, incoming.paths.vm_dir, plan, image.disk
            )
        host = urlsplit(mgr._settings.advertise).hostname or "127.0.0.1"
        sources = await self._addresses(incoming.offer.source_node)
        nic = mgr._resources.incoming_nic(vm)
        qemu_end, incoming.passt_end = nic if nic is not None else (None, None)
        try:
            tapped = await mgr._resources.incoming_tap(vm)
            if tapped is not None:  # the record names this node's tap from now on
                incoming.record = vm = vm.model_copy(update={"network_info": tapped})
            incoming.dest = await mgr.migrations.destination_qemu(
                vm, incoming.paths, incoming.tpm_dir, qemu_end
            )
        finally:
            if qemu_end is not None:
                qemu_end.close()
        key = mgr.peers.psk(token, vm.uuid) if mgr.peers is not None else ""
        crossnode.write_psk(incoming.psk_dir, key, mgr.qemu_identity)
        exported = plan.mirrored if plan is not None else []
        stream, nbd_port = await crossnode.open_incoming(
            incoming.dest, host, incoming.psk_dir, exported
        )
        port = int(stream.getsockname()[1])
        mgr._spawn(vm.id, self._receive, token, stream, sources)
        mgr._spawn(vm.id, self._settle_when_quiet, token)
        self._step(vm.id, "destination_ready", pid=incoming.dest.pid)
        return IncomingPorts(host=host, migration_port=port, nbd_port=nbd_port)

    async def _addresses(self, node: str) -> frozenset[str]:
        """The addresses the source node's advertised host resolves to.

        Raises:
            MigrationRefused: it cannot be found or resolved.
        """
        peers = self._mgr.peers
        if peers is None:
            raise MigrationRefused("this node takes no migrations (no cluster secret)")
        host = urlsplit(await peers.url_of(node)).hostname or ""
        try:
            found = await trio.socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as err:
            raise MigrationRefused(f"the source node's address {host!r}: {err}") from err
        return frozenset(str(entry[4][0]) for entry in found)

    async def commit(self, token: str) -> Vm:
        """The source says the stream is complete and etcd names this node: run it.

        Raises:
            NotFound. MigrationRefused: etcd does not name this node (the destination
                is discarded), or the stream did not complete here.
        """
        incoming = self._get(token)
        if incoming.settled.is_set():
            raise NotFound(f"migration {token!r} is settled already", token=token)
        owner = await self._owner(incoming.record.id)
        if owner != self._mgr._settings.node_name:
            await self.abort(token)
            raise MigrationRefused(f"etcd names node {owner!r} the VM's owner, not this one")
        try:
            return await self._run(incoming)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._discard(incoming)
            raise

    async def _owner(self, vm_id: str) -> str | None:
        peers = self._mgr.peers
        if peers is None:
            raise MigrationRefused("this node takes no migrations (no cluster secret)")
        return await peers.owner(vm_id)

    async def _run(self, incoming: _Incoming) -> Vm:
        mgr, vm, dest = self._mgr, incoming.record, incoming.dest
        if dest is None:
            raise MigrationRefused("the destination was never opened")
        incoming.settled.set()
        self._pending.pop(incoming.offer.token, None)
        await wait_migration(dest, mgr._settings.migration_timeout_s, sending=False)
        plan = incoming.offer.disk
        await crossnode.finish_incoming(dest, plan.mirrored if plan is not None else [])
        if incoming.tpm_dir is not None:
            tpm.set_state_dir(incoming.paths.vm_dir, incoming.tpm_dir)
        if mgr.live_count is not None:
            await mgr.live_count.admit(vm, 0)  # the same VM, counted here now
        record = vm.model_copy(update={"pid": dest.pid})
        mgr._store.insert_vm(record)
        if vm.state is VmState.RUNNING:
            await qmp_commands.cont(dest)
        shutil.rmtree(incoming.psk_dir, ignore_errors=True)
        await mgr._supervise(dest)
        await self._serve_nic(incoming)
        mgr._announce()
        await mgr.snapshots.count_storage(vm.tenant)  # its folder is this node's now
        self._step(vm.id, "arrived", source_node=incoming.offer.source_node, pid=dest.pid)
        return mgr._live(record)

    async def _serve_nic(self, incoming: _Incoming) -> None:
        end, info = incoming.passt_end, incoming.record.network_info
        if end is None:
            return
        if info is None:
            end.close()
            return
        try:
            await self._mgr._resources.serve_nic(info, incoming.paths, end)
        except HMError as err:  # the guest runs on, without network: say so
            log.error("%s: no network after the migration: %s", incoming.record.id, err.message)
            self._step(incoming.record.id, "network_lost", reason=err.message)

    async def abort(self, token: str) -> None:
        """End the destination (the source goes on).

        Raises:
            NotFound: no such migration waiting.
        """
        incoming = self._get(token)
        if incoming.settled.is_set():
            raise NotFound(f"migration {token!r} is settled already", token=token)
        incoming.settled.set()
        await self._discard(incoming)
        self._step(incoming.record.id, "abandoned", source_node=incoming.offer.source_node)

    async def _discard(self, incoming: _Incoming) -> None:
        self._pending.pop(incoming.offer.token, None)
        if incoming.dest is not None:
            await incoming.dest.discard()
        if incoming.passt_end is not None:
            incoming.passt_end.close()
        paths = incoming.paths
        info = incoming.record.network_info
        if incoming.offer.vm.network_info != info and info is not None and info.tap is not None:
            await self._mgr._resources.drop_tap(info.tap)  # the one made here
        if incoming.tpm_dir is not None:
            tpm.stop(tpm.TpmPaths.for_vm(paths, incoming.tpm_dir))
            if tpm.state_dir_of(paths.vm_dir) != incoming.tpm_dir:
                shutil.rmtree(incoming.tpm_dir, ignore_errors=True)
        paths.clear_runtime()
        if incoming.made_folder:
            shutil.rmtree(paths.vm_dir, ignore_errors=True)

    async def _receive(self, token: str, stream: socket.socket, sources: frozenset[str]) -> None:
        """Take the stream's connection, unless the migration is settled first."""
        incoming = self._get(token)
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                try:
                    if incoming.dest is not None:
                        await crossnode.receive_state(incoming.dest, stream, sources)
                except (HMError, OSError) as err:  # the source's wait fails: it aborts
                    log.error("%s: the migration stream was not taken: %s", token, err)
                nursery.cancel_scope.cancel()

            nursery.start_soon(receive)
            await incoming.settled.wait()
            nursery.cancel_scope.cancel()
        stream.close()

    async def _settle_when_quiet(self, token: str) -> None:
        """The source went quiet: etcd decides (run it if it names this node)."""
        incoming = self._get(token)
        budget = 3 * self._mgr._settings.migration_timeout_s + 60
        with trio.move_on_after(budget):
            await incoming.settled.wait()
            return
        with contextlib.suppress(HMError):
            if await self._owner(incoming.record.id) == self._mgr._settings.node_name:
                log.warning("%s: its source never confirmed; etcd names this node", token)
                await self.commit(token)
                return
        with contextlib.suppress(HMError):
            await self.abort(token)
