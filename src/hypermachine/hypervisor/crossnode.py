"""The QEMU and file steps of a live migration to another node; the services on each
side compose them (:mod:`.migration_outgoing`, :mod:`.migration_incoming`).

* **Authenticated and private.** Both QEMUs load the same pre-shared TLS key, derived
  from the cluster secret and the migration's token (never sent): the RAM stream and
  the NBD connections are TLS with it, so nobody on the network can read them or
  feed the destination a state of their own. The destination's ports are open only
  while it waits for this one migration. The servers open every connection and hand
  the sockets to QEMU (``getfd``): QEMU's user stays kept off the host's loopback.
* **The disk.** On shared storage both QEMUs open the same files; the destination
  takes the disk's locks only when it runs (``late-block-activate``). Otherwise the
  frozen layers, the seed and the VARS travel as files first; the destination makes
  an empty top layer above the same chain and exports it (and its VARS) over NBD;
  the source mirrors its written top (``sync: top``) and VARS (``full``) into them
  while the guest runs; once the RAM stream is complete, the ``ready`` mirrors are
  cancelled, which leaves the copies identical.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import stat
from pathlib import Path

import trio

from ..errors import HypervisorError, MigrationRefused
from ..models import DiskPlan
from .platform import vmplatform
from .qemu import qmp_commands
from .qemu.machine import Machine
from .storage import disks, layers, snapfiles
from .storage.snapshots import top_node, wait_migration
from .vmfiles import nofollow
from .vmfiles.confine import QemuIdentity
from .vmfiles.layout import VmPaths

__all__ = [
    "TLS_ID",
    "disk_plan",
    "finish_incoming",
    "finish_mirrors",
    "image_digest",
    "load_key",
    "open_incoming",
    "receive_state",
    "remake_disk",
    "send_state",
    "start_mirrors",
    "undo_sending",
    "write_psk",
]

log = logging.getLogger(__name__)

TLS_ID = "hm-migration-tls"
_NBD_FD = "hm-nbd"
_STREAM_FD = "hm-stream"
_DISK_NODE = "disk0"
_VARS_NODE = "fw-vars"
_PEER_SUFFIX = "-peer"
_POLL_S = 0.05


def write_psk(folder: Path, key: str, identity: QemuIdentity | None) -> Path:
    """The key file QEMU reads (``keys.psk``, readable by QEMU's user only)."""
    folder.mkdir(mode=0o700)
    nofollow.write_file(folder / "keys.psk", f"hm:{key}\n".encode())
    if identity is not None:
        identity.own(folder)
    return folder


# -- the disk folder, when storage is not shared ------------------------------


_DIGESTS: dict[tuple[str, int, int, int], str] = {}


async def image_digest(disk: Path, known: str | None) -> str:
    """The image file's sha256: the catalogue's, or hashed once per version of the file
    (an image is not rewritten in place; every migration of its VMs asks)."""
    if known is not None:
        return known
    st = disk.stat()
    key = (str(disk), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:

        def hashed() -> str:
            with open(disk, "rb") as file:
                return hashlib.file_digest(file, "sha256").hexdigest()

        _DIGESTS[key] = await trio.to_thread.run_sync(hashed)
    return _DIGESTS[key]


def disk_plan(paths: VmPaths, image_sha256: str | None, image_format: str | None) -> DiskPlan:
    """What the destination needs to remake the VM's folder (the source's view).

    Raises:
        MigrationRefused: the disk is not a chain of layers this server made.
    """
    vm_dir = paths.vm_dir
    top = layers.current(vm_dir)
    chain = layers.chain(vm_dir, top)
    size = layers.virtual_size(vm_dir / top)
    if not chain or size is None:
        raise MigrationRefused("the VM's disk is not a layer chain this server can copy")
    frozen = [name for name in layers.all_layers(vm_dir) if name != top]
    vars_file = vmplatform.vars_file(paths)
    fixed = [p.name for p in (paths.seed_iso, vars_file) if p.is_file()]
    files = [*frozen, *fixed, *_snapshot_files(vm_dir)]
    mirrored = [_DISK_NODE, *([_VARS_NODE] if vars_file.is_file() else [])]
    for name in files:  # the QEMU user may write this folder: a link here is planted
        if not _plain(vm_dir, name):
            raise MigrationRefused(
                f"{name} in the VM's folder is not a regular file (a symlink?)", file=name
            )
    return DiskPlan(
        files={name: (vm_dir / name).stat().st_size for name in files},
        top=top,
        virtual_size=size,
        below=chain[1] if len(chain) > 1 else None,
        on_image=[name for name in (*frozen, top) if _on_image(vm_dir / name)],
        image_sha256=image_sha256,
        image_format=image_format,
        mirrored=mirrored,
    )


def _plain(vm_dir: Path, name: str) -> bool:
    """Whether ``name`` is a regular file reached through real folders only."""
    parts = Path(name).parts
    folders = (vm_dir.joinpath(*parts[:depth]) for depth in range(1, len(parts)))
    if not all(stat.S_ISDIR(os.lstat(folder).st_mode) for folder in folders):
        return False
    return stat.S_ISREG(os.lstat(vm_dir / name).st_mode)


def _on_image(layer: Path) -> bool:
    """Whether the layer is backed by the catalogue image (an absolute path)."""
    return (layers.backing_of(layer) or "").startswith("/")


def _snapshot_files(vm_dir: Path) -> list[str]:
    """Every file of the VM's finished snapshots, as paths inside its folder (not the
    hidden ones: swtpm's ``.lock`` in a copied TPM state dir is no state)."""
    found = []
    for snapshot in snapfiles.list_snapshots(vm_dir):
        for file in snapshot.files():
            inside = Path(*snapshot.parts, file)
            if not any(part.startswith(".") for part in inside.parts):
                found.append(str(inside))
    return found


async def remake_disk(qemu_img: str, vm_dir: Path, plan: DiskPlan, image: Path | None) -> None:
    """On the destination, once the files are in: the layers that were backed by the
    image backed by this node's copy of it, an empty top layer above the chain,
    ``disk.qcow2``.

    Raises:
        HypervisorError: qemu-img failed.
    """
    for name in plan.on_image if image is not None and plan.image_format else ():
        if name != plan.top:
            await disks.qemu_img(
                qemu_img, "rebase", "-u", "-b", str(image), "-F", str(plan.image_format),
                str(vm_dir / name),
            )  # fmt: skip
    if plan.below is not None:
        backing: list[str] = ["-b", plan.below, "-F", "qcow2"]
    elif image is not None and plan.image_format is not None:
        backing = ["-b", str(image), "-F", plan.image_format]
    else:
        backing = []
    await disks.qemu_img(
        qemu_img, "create", "-q", "-f", "qcow2", "-u", *backing,
        str(vm_dir / plan.top), str(plan.virtual_size),
    )  # fmt: skip
    layers.point_top(vm_dir, plan.top)


# -- the destination ------------------------------------------------------------


async def open_incoming(
    dest: Machine, host: str, psk_dir: Path, exported: list[str]
) -> tuple[socket.socket, int | None]:
    """Make ``dest`` (started ``-incoming defer``) ready for the stream over TLS and,
    with ``exported`` nodes, serve them over NBD (TLS) on a port of ``host``. Returns
    the listening socket the stream will come to (:func:`receive_state` takes it) and
    the NBD port.

    Raises:
        HypervisorError: QEMU refused. OSError: no port could be bound on ``host``.
    """
    await qmp_commands.add_tls_psk(dest, TLS_ID, str(psk_dir), server=True)
    await qmp_commands.migrate_set_capabilities(dest, {"late-block-activate": True})
    await qmp_commands.use_tls(dest, TLS_ID)
    stream = socket.create_server((host, 0), backlog=1)
    if not exported:
        return stream, None
    with socket.create_server((host, 0), backlog=len(exported)) as listener:
        nbd_port = int(listener.getsockname()[1])
        await qmp_commands.getfd(dest, listener.fileno(), _NBD_FD)
    await qmp_commands.start_nbd_server(dest, _NBD_FD, TLS_ID, len(exported))
    for node in exported:
        await qmp_commands.export_writable(dest, node)
    return stream, nbd_port


async def receive_state(dest: Machine, stream: socket.socket, sources: frozenset[str]) -> None:
    """Take the first connection to ``stream`` from one of the ``sources`` addresses
    (the source node's) as the migration stream; the listener then closes. Others are
    closed unread; one from a source address that is not the source fails its TLS
    handshake, and the migration.

    Raises:
        HypervisorError: QEMU refused.
    """
    with contextlib.closing(trio.socket.from_stdlib_socket(stream)) as listener:
        while True:
            connection, peer = await listener.accept()
            if peer[0] in sources:
                break
            log.warning("a connection from %s to a migration's stream port, closed", peer[0])
            connection.close()
    with connection:
        await qmp_commands.getfd(dest, connection.fileno(), _STREAM_FD)
    await qmp_commands.migrate_incoming(dest, _STREAM_FD)


async def finish_incoming(dest: Machine, exported: list[str]) -> None:
    """The stream is in: end the NBD export and forget the TLS settings, so that this
    QEMU can later be a migration's source itself (to a node or on this host).

    Raises:
        HypervisorError: QEMU refused.
    """
    if exported:
        await qmp_commands.stop_nbd_server(dest)
    await qmp_commands.drop_tls(dest, TLS_ID)


# -- the source -------------------------------------------------------------------


async def load_key(source: Machine, psk_dir: Path) -> None:
    """Give the source QEMU the migration's TLS key (a client's), for NBD and the stream."""
    await qmp_commands.add_tls_psk(source, TLS_ID, str(psk_dir), server=False)


async def start_mirrors(
    source: Machine, host: str, port: int, nodes: list[str], timeout_s: float
) -> None:
    """Mirror ``nodes`` into the destination's NBD exports until each is ``ready``
    (copied, and every new write copied too).

    Raises:
        HypervisorError: QEMU refused, a job failed, or the budget ran out.
    """
    for node in nodes:
        fd_name = f"{_NBD_FD}-{node}"
        await _hand_connection(source, host, port, fd_name)
        await qmp_commands.add_nbd_target(source, node + _PEER_SUFFIX, node, fd_name, TLS_ID)
        # The destination's disk is one node again; here snapshots may have stacked more.
        written = await top_node(source) if node == _DISK_NODE else node
        await qmp_commands.mirror(
            source, _job(node), written, node + _PEER_SUFFIX, whole=node != _DISK_NODE
        )
    with trio.move_on_after(timeout_s):
        while True:
            jobs = await qmp_commands.mirror_jobs(source)
            missing = [node for node in nodes if _job(node) not in jobs]
            if missing:
                raise HypervisorError(f"the copy of {', '.join(missing)} to the node failed")
            if all(jobs[_job(node)].ready for node in nodes):
                return
            await trio.sleep(_POLL_S)
    raise HypervisorError(f"the disks were not copied to the node within {timeout_s:.0f} s")


async def finish_mirrors(source: Machine, nodes: list[str], timeout_s: float) -> None:
    """The stream is complete (the guest paused): end the mirrors, leaving the copies
    identical, and let go of the NBD connections.

    Raises:
        HypervisorError: a job did not end within the budget.
    """
    for node in nodes:
        await qmp_commands.cancel_mirror(source, _job(node))
    with trio.move_on_after(timeout_s):
        while set(map(_job, nodes)) & set(await qmp_commands.mirror_jobs(source)):
            await trio.sleep(_POLL_S)
        for node in nodes:
            await qmp_commands.del_node(source, node + _PEER_SUFFIX)
        return
    raise HypervisorError("the disk copies did not finish")


async def undo_sending(source: Machine, nodes: list[str]) -> None:
    """After a failure: stop whatever mirror still runs and drop the TLS settings, so
    that a later migration starts clean (best effort)."""
    for node in nodes:
        with contextlib.suppress(HypervisorError):
            await qmp_commands.cancel_mirror(source, _job(node))
    for node in nodes:
        with contextlib.suppress(HypervisorError), trio.move_on_after(10):
            while _job(node) in await qmp_commands.mirror_jobs(source):
                await trio.sleep(_POLL_S)
            await qmp_commands.del_node(source, node + _PEER_SUFFIX)
    with contextlib.suppress(HypervisorError):
        await qmp_commands.drop_tls(source, TLS_ID)


async def send_state(
    source: Machine,
    peer: str,
    host: str,
    port: int,
    *,
    bandwidth_mib_s: int,
    timeout_s: float,
) -> qmp_commands.MigrationStatus:
    """Stream RAM and devices to the node waiting on ``host:port``, over TLS; returns
    QEMU's figures once complete (the source then ``postmigrate``).

    Raises:
        HypervisorError: QEMU refused or failed, or the budget ran out.
    """
    await qmp_commands.use_tls(source, TLS_ID, hostname=peer)
    await qmp_commands.migrate_set_bandwidth(source, bandwidth_mib_s * 1024 * 1024)
    await _hand_connection(source, host, port, _STREAM_FD)
    await qmp_commands.migrate(source, _STREAM_FD)
    return await wait_migration(source, timeout_s, sending=True)


async def _hand_connection(source: Machine, host: str, port: int, fd_name: str) -> None:
    """Connect to the peer and hand the socket to QEMU as ``fd_name``: the server, not
    QEMU's user (kept off the host's loopback), opens every connection.

    Raises:
        HypervisorError: the peer did not answer, or QEMU refused.
    """
    try:
        connection = trio.socket.socket()
        await connection.connect((host, port))
    except OSError as err:
        raise HypervisorError(f"the destination at {host}:{port} did not answer: {err}") from err
    with connection:
        await qmp_commands.getfd(source, connection.fileno(), fd_name)


def _job(node: str) -> str:
    return f"hm-mirror-{node}"
