"""Running the whole server: services, the VM manager, and Hypercorn on Trio.

Ownership: ``serve`` opens the root nursery; ``Manager.run`` starts in it with
``nursery.start`` (so HTTP is served only after every running VM is re-adopted);
Hypercorn serves the app in the same nursery. On shutdown the manager's tasks are
cancelled, which detaches from QEMU: VMs keep running for the next server.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer

from .api import Services, create_app
from .cluster import Etcd, EtcdError, Membership
from .cluster.feeder import WatchdogFeeder
from .cluster.forwarding import Forwarder, NodeAuth, read_secret
from .cluster.keys import ClusterKeys
from .cluster.nodes import describe
from .cluster.ownership import Ownership, drop_moved
from .cluster.peers import Peers
from .cluster.quota import LiveLedger
from .cluster.ratelimit import ClusterLimiter
from .cluster.restart import Restarts
from .cluster.storage import StorageLedger
from .cluster.views import Views
from .config import ConfigError, Settings
from .errors import ClusterUnavailable
from .groups import sole_exception
from .hypervisor.manager import Manager
from .hypervisor.platform.host import HostFacts, probe_host
from .hypervisor.qemu.qmp import QmpBridge
from .hypervisor.vmfiles.confine import QemuIdentity, resolve_qemu_identity
from .hypervisor.vmfiles.layout import claim_server_dir
from .images import Catalogue
from .sandbox import Limits, RhaiRuntime
from .sandbox.hostapi import ScriptService
from .security import Security, SecurityStore
from .store import Store
from .watchdog import node_qemus

__all__ = ["open_services", "serve"]

log = logging.getLogger(__name__)


@asynccontextmanager
async def _security(settings: Settings) -> AsyncIterator[Security]:
    """The security layer, started-up checked; a cluster's keys are in etcd.

    Raises:
        ConfigError: an open server on a non-loopback bind; etcd cannot be read.
    """
    store = SecurityStore(settings.database_file)
    etcd = Etcd(settings.etcd_urls, timeout_s=settings.etcd_timeout_s) if settings.etcd else None
    try:
        security = Security(
            settings,
            store,
            keys=ClusterKeys(etcd) if etcd is not None else None,
            limiter=ClusterLimiter(etcd, settings.node_name) if etcd is not None else None,
        )
        if etcd is not None and store.any_keys():
            log.warning(
                "this host's own API keys are not used: a cluster node takes the cluster's "
                "(hypermachine key create --etcd URLS …)"
            )
        try:
            await security.check_startup()
        except ClusterUnavailable as err:
            raise ConfigError(err.message) from err
        yield security
    finally:
        if etcd is not None:
            with trio.CancelScope(shield=True):
                await etcd.aclose()
        store.close()


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Everything the API needs, with the manager running (VMs re-adopted) inside."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with _security(settings) as security:
        host = await trio.to_thread.run_sync(probe_host, settings.qemu_binary, settings.accelerator)
        identity = await trio.to_thread.run_sync(_prepare_folders, settings)
        try:
            async with _running(settings, security, host, identity) as services:
                yield services
        except BaseExceptionGroup as group:  # a step of the start-up refused
            refusal = sole_exception(group)
            if not isinstance(refusal, ConfigError):
                raise
            raise refusal from None


@asynccontextmanager
async def _running(
    settings: Settings, security: Security, host: HostFacts, identity: QemuIdentity | None
) -> AsyncIterator[Services]:
    store = Store(settings.database_file)
    catalogue = Catalogue(
        settings.catalogue_file, settings.builtin_images_dir, settings.images_store_dir
    )
    runtime = await trio.to_thread.run_sync(RhaiRuntime, settings.cache_dir)
    bridge = QmpBridge()
    joined = None
    try:
        async with trio.open_nursery() as nursery:
            manager = Manager(
                settings, store, catalogue, host, bridge, guard=security, qemu_identity=identity
            )
            await nursery.start(manager.run)
            joined = await _join_cluster(nursery, settings, manager)
            scripts = ScriptService(
                manager,
                runtime,
                max_concurrent=settings.max_concurrent_scripts,
                per_tenant=settings.max_scripts_per_tenant,
                ceiling=Limits(timeout_ms=int(settings.script_timeout_s * 1000)),
            )
            yield Services(
                settings=settings,
                manager=manager,
                catalogue=catalogue,
                scripts=scripts,
                security=security,
                cluster=joined.membership if joined is not None else None,
                forwarder=joined.forwarder if joined is not None else None,
                views=joined.views if joined is not None else None,
            )
            nursery.cancel_scope.cancel()
    finally:
        if joined is not None:
            with trio.CancelScope(shield=True):
                await joined.feeder.aclose()  # the lease's last renewal, if it was kept
                await joined.membership.close()
                if joined.forwarder is not None:
                    await joined.forwarder.aclose()
        bridge.close()
        runtime.close()
        store.close()


@dataclass(frozen=True)
class _Joined:
    membership: Membership
    feeder: WatchdogFeeder
    forwarder: Forwarder | None
    views: Views


async def _join_cluster(
    nursery: trio.Nursery, settings: Settings, manager: Manager
) -> _Joined | None:
    """With ``etcd`` set: register this node (its lease kept alive in ``nursery``) and,
    with a cluster secret, forward requests for VMs other nodes own.

    Raises:
        ConfigError: etcd could not be reached or refused the registration; an
            unreadable cluster secret.
    """
    if not settings.etcd_urls:
        return None
    name, url = settings.node_name, settings.advertise
    secret_file = settings.cluster_secret_file
    auth = NodeAuth(name, read_secret(secret_file)) if secret_file is not None else None
    etcd = Etcd(settings.etcd_urls, timeout_s=settings.etcd_timeout_s)
    feeder = WatchdogFeeder(settings.runtime_dir)
    nursery.start_soon(feeder.run)
    membership = Membership(
        etcd,
        name,
        settings.node_lease_ttl_s,
        partial(describe, manager, name=name, url=url),
        fence=manager.fence,
        arm=feeder.arm,
        qemus_running=partial(_qemus_running, settings),
    )
    try:
        await nursery.start(membership.run)
    except EtcdError as err:
        await etcd.aclose()
        raise ConfigError(f"node {name} could not register in etcd: {err}") from err
    ownership = Ownership(etcd, name, lambda: membership.cut_off)
    manager.owners = ownership
    try:
        await drop_moved(ownership, manager, name)  # before the quotas count it here
    except ClusterUnavailable as err:
        raise ConfigError(f"node {name}: {err.message}") from err
    await _count_quotas(etcd, membership, manager)
    forwarder = None
    if auth is not None:
        budget = max(settings.wait_timeout_max_s, settings.migration_timeout_s) + 30
        forwarder = Forwarder(
            auth, etcd, membership, lambda vm_id: manager.owner_of(vm_id) is not None,
            timeout_s=budget,
        )  # fmt: skip
        manager.peers = Peers(forwarder, membership, ownership)
    views = Views(etcd, membership, manager)
    nursery.start_soon(views.run, settings.node_lease_ttl_s / 3)
    if manager.shared_storage:
        restarts = Restarts(etcd, membership, ownership, manager)
        nursery.start_soon(restarts.run, settings.node_lease_ttl_s / 3)
    return _Joined(membership, feeder, forwarder, views)


async def _qemus_running(settings: Settings) -> bool:
    """Whether any QEMU of this node runs (a process, whatever the manager's state)."""
    return bool(await trio.to_thread.run_sync(node_qemus, settings.runtime_dir))


async def _count_quotas(etcd: Etcd, membership: Membership, manager: Manager) -> None:
    """Give the manager the cluster's counts of each tenant's live VMs and stored bytes,
    once this node's own are counted: the VMs that kept running through a restart, and
    what its files hold now.

    Raises:
        ConfigError: etcd could not be asked.
    """
    live = LiveLedger(etcd, membership.name, lambda: membership.lease)
    storage = StorageLedger(etcd, membership.name)
    try:
        await live.recount(manager.live_vms())
        await storage.recount(manager.snapshots.usage_by_tenant())
    except ClusterUnavailable as err:
        raise ConfigError(f"node {membership.name}: {err.message}") from err
    manager.live_count, manager.storage_count = live, storage


def _prepare_folders(settings: Settings) -> QemuIdentity | None:
    """Create the server's folders, check the runtime dir is its own, and resolve who
    QEMU runs as (making the folders it opens files in reachable to that user).

    Raises:
        ConfigError: a runtime dir that is not the server's; an unreachable folder.
    """
    runtime = settings.runtime_dir
    for folder in [runtime] if settings.run_dir is not None else [runtime.parent, runtime]:
        claim_server_dir(folder)
    shared = [settings.shared_vms_dir] if settings.shared_vms_dir is not None else []
    for folder in (settings.vms_dir, settings.images_store_dir, *shared):
        folder.mkdir(parents=True, exist_ok=True)
    return resolve_qemu_identity(settings.qemu_user, settings.qemu_folders)


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down (VMs keep running)", signal.Signals(signum).name)
            return


def _contain_connection_failures() -> None:
    """One client connection must never end the server.

    Hypercorn 0.18 lets an h11 protocol error of one connection (a pipelined request
    after a refused websocket upgrade: ``LocalProtocolError: can't handle event type
    Response when role=SERVER and state=SEND_BODY``) travel out of its connection task
    to the listener's nursery, ending every connection and the server. The connection
    task is wrapped here, once, so such an error closes only that connection (logged);
    cancellation still passes.
    """
    if getattr(TCPServer.run, "_hm_contained", False):
        return
    run = TCPServer.run

    async def contained(self: TCPServer) -> None:
        try:
            await run(self)
        except Exception:  # a bug of the HTTP stack, confined to its connection
            log.exception("an HTTP connection failed and was closed")

    contained._hm_contained = True  # type: ignore[attr-defined]
    TCPServer.run = contained  # type: ignore[method-assign]


async def serve(
    settings: Settings, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    async with open_services(settings) as services:
        host = services.manager.host
        log.info(
            "accelerator %s (%s), QEMU %s, data in %s",
            host.accelerator,
            host.accelerator_reason,
            host.qemu_version,
            settings.data_dir,
        )
        config = HypercornConfig()
        config.bind = [f"{settings.host}:{settings.port}"]
        config.accesslog = logging.getLogger("hypermachine.access")
        config.errorlog = logging.getLogger("hypermachine.http")
        config.h11_max_incomplete_size = 64 * 1024
        # No read timeout by default: hypercorn applies it to the whole connection, which
        # would cut server-sent event streams, console websockets and long exec waits.
        # Idle connections still close after keep_alive_timeout.
        config.read_timeout = settings.http_read_timeout_s or None
        config.keep_alive_timeout = settings.http_keep_alive_timeout_s
        _contain_connection_failures()
        await hypercorn_serve(
            create_app(services), config, shutdown_trigger=_until_signal, task_status=task_status
        )
