"""The QMP vocabulary: one function per QMP command HyperMachine sends, typed answers.

Every command name and every reading of a reply lives here; the rest of the server
calls these functions with a :class:`Target` (a :class:`~.machine.Machine`, which
times each command and turns a lost connection into ``HypervisorError``). Replies
come from QEMU, not the guest, but are still read defensively: a field that is
missing or of the wrong type reads as "unknown", never as an exception from deep in
a dict.

The capability probe speaks QMP over a probe QEMU's stdin (no session), so its
requests and the reading of its answers are here too (:func:`probe_requests`,
:func:`parse_probe_replies`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "READ_ONLY_QMP",
    "BlockDevice",
    "BlockStats",
    "MigrationStatus",
    "MirrorJob",
    "ProbeAnswers",
    "RunState",
    "Target",
    "add_nbd_target",
    "add_tls_psk",
    "attestation_queries",
    "blockdev_add_qcow2",
    "blockdev_snapshot",
    "cancel_mirror",
    "cont",
    "del_node",
    "drop_tls",
    "export_writable",
    "getfd",
    "migrate",
    "migrate_cancel",
    "migrate_incoming",
    "migrate_set_bandwidth",
    "mirror",
    "mirror_jobs",
    "parse_probe_replies",
    "probe_requests",
    "query_block",
    "query_blockstats",
    "query_migrate",
    "query_status",
    "quit_qemu",
    "read_guest_words",
    "start_nbd_server",
    "stop",
    "stop_nbd_server",
    "system_powerdown",
    "system_reset",
    "use_tls",
]


class Target(Protocol):
    """Where a command goes: a connected QEMU."""

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        """Run one command and return its ``return`` value."""
        ...

    async def execute_with_fd(self, command: str, arguments: dict[str, object], fd: int) -> None:
        """Run one command with ``fd`` passed alongside it (SCM_RIGHTS)."""
        ...


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


# QMP commands a caller may send as they are (``query_vm_qmp``, a script's ``vm.qmp``):
# queries with no side effects that reveal no host paths (so not query-block or
# query-chardev). Nothing that writes host files or spawns processes (migrate,
# screendump, dump-guest-memory …) can ever be reached.
READ_ONLY_QMP = frozenset(
    {
        "query-status",
        "query-name",
        "query-uuid",
        "query-version",
        "query-kvm",
        "query-cpus-fast",
        "query-blockstats",
        "query-memory-size-summary",
        "query-commands",
        "query-events",
        "query-target",
        "query-machines",
        "query-hotpluggable-cpus",
        "query-balloon",
        "query-tpm",
    }
)


# -- run state ---------------------------------------------------------------


@dataclass(frozen=True)
class RunState:
    """``query-status``: QEMU's run state (``running``, ``paused``, ``prelaunch``,
    ``inmigrate``, ``postmigrate``, …); None when QEMU's answer had none."""

    status: str | None


async def query_status(target: Target) -> RunState:
    status = _dict(await target.execute("query-status")).get("status")
    return RunState(status if isinstance(status, str) else None)


async def stop(target: Target) -> None:
    """Pause the guest's vCPUs."""
    await target.execute("stop")


async def cont(target: Target) -> None:
    """Let the guest's vCPUs run."""
    await target.execute("cont")


async def system_reset(target: Target) -> None:
    """Hard reset of the guest."""
    await target.execute("system_reset")


async def system_powerdown(target: Target) -> None:
    """Press the ACPI power button."""
    await target.execute("system_powerdown")


async def quit_qemu(target: Target) -> None:
    """``quit``: end QEMU at once."""
    await target.execute("quit")


async def read_guest_words(target: Target, address: int, count: int) -> tuple[int, ...] | None:
    """``count`` 32-bit words of guest-physical memory at ``address``, as the vCPUs see
    it (through the chipset's mapping); None when QEMU's answer cannot be read.

    QMP has no such read, so this is HMP's ``xp``; its answer is lines of
    ``<address>: 0x<word> 0x<word> …``."""
    answer = await target.execute(
        "human-monitor-command", {"command-line": f"xp /{count}xw {address:#x}"}
    )
    if not isinstance(answer, str):
        return None
    try:
        words = tuple(
            int(word, 16) for line in answer.splitlines() for word in line.split(":", 1)[1].split()
        )
    except (IndexError, ValueError):
        return None
    return words if len(words) == count else None


# -- block devices -----------------------------------------------------------


@dataclass(frozen=True)
class BlockStats:
    """One entry of ``query-blockstats``."""

    device: str
    read_bytes: int
    write_bytes: int
    read_ops: int
    write_ops: int


def _block_stats(entry: dict[str, Any]) -> BlockStats:
    stats = _dict(entry.get("stats"))
    return BlockStats(
        device=str(entry.get("qdev") or entry.get("device") or entry.get("node-name") or "?"),
        read_bytes=int(stats.get("rd_bytes", 0)),
        write_bytes=int(stats.get("wr_bytes", 0)),
        read_ops=int(stats.get("rd_operations", 0)),
        write_ops=int(stats.get("wr_operations", 0)),
    )


async def query_blockstats(target: Target) -> list[BlockStats]:
    answer = await target.execute("query-blockstats")
    return [_block_stats(entry) for entry in _list(answer) if isinstance(entry, dict)]


@dataclass(frozen=True)
class BlockDevice:
    """One entry of ``query-block``: the device (``qdev``: its id or QOM path) and the
    node-name of the image inserted in it (None: no medium)."""

    qdev: str
    device: str
    node_name: str | None


async def query_block(target: Target) -> list[BlockDevice]:
    devices = []
    for entry in _list(await target.execute("query-block")):
        if not isinstance(entry, dict):
            continue
        node = _dict(entry.get("inserted")).get("node-name")
        devices.append(
            BlockDevice(
                qdev=str(entry.get("qdev", "")),
                device=str(entry.get("device", "")),
                node_name=None if node is None else str(node),
            )
        )
    return devices


async def blockdev_add_qcow2(target: Target, node_name: str, filename: str) -> None:
    """Open ``filename`` as a qcow2 node with no backing yet (``blockdev-snapshot``
    gives it the current top)."""
    await target.execute(
        "blockdev-add",
        {
            "driver": "qcow2",
            "node-name": node_name,
            "file": {"driver": "file", "filename": filename},
            "backing": None,
        },
    )


async def blockdev_snapshot(target: Target, node: str, overlay: str) -> None:
    """Make ``overlay`` the new top above ``node``; QEMU drains in-flight I/O first."""
    await target.execute("blockdev-snapshot", {"node": node, "overlay": overlay})


# -- migration (RAM to and from a descriptor) ----------------------------------


@dataclass(frozen=True)
class MigrationStatus:
    """``query-migrate``: the stream's state (None before any), QEMU's reasons it
    cannot migrate now, and its description of a failure.

    ``sending`` says the state is of a stream this QEMU sends: a QEMU that once
    received one (a restored or migrated VM) answers ``completed`` for that incoming
    stream, without any times, until its own outgoing stream has begun.
    """

    status: str | None
    sending: bool = False
    blocked_reasons: tuple[str, ...] = ()
    error_desc: str = ""
    total_time_ms: int = 0  # the sending side's figures, once completed
    downtime_ms: int = 0
    setup_time_ms: int = 0
    transferred_bytes: int = 0


async def query_migrate(target: Target) -> MigrationStatus:
    answer = _dict(await target.execute("query-migrate"))
    status = answer.get("status")
    ram = answer.get("ram")
    return MigrationStatus(
        status=status if isinstance(status, str) else None,
        sending="total-time" in answer,
        blocked_reasons=tuple(str(r) for r in _list(answer.get("blocked-reasons", []))),
        error_desc=str(answer.get("error-desc", "")),
        total_time_ms=_count(answer.get("total-time")),
        downtime_ms=_count(answer.get("downtime")),
        setup_time_ms=_count(answer.get("setup-time")),
        transferred_bytes=_count(ram.get("transferred") if isinstance(ram, dict) else None),
    )


def _count(value: object) -> int:
    """A non-negative integer QEMU reports, or 0 when it reports none."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


async def getfd(target: Target, fd: int, name: str) -> None:
    """Hand QEMU a copy of ``fd`` under ``name``, for an ``fd:NAME`` URI."""
    await target.execute_with_fd("getfd", {"fdname": name}, fd)


async def migrate_set_bandwidth(target: Target, bytes_per_s: int) -> None:
    await target.execute("migrate-set-parameters", {"max-bandwidth": bytes_per_s})


async def migrate_skip_announce(target: Target) -> None:
    """No self-announcing rounds once an incoming stream has loaded."""
    await target.execute("migrate-set-parameters", {"announce-rounds": 0})


async def migrate_set_capabilities(target: Target, enabled: dict[str, bool]) -> None:
    capabilities = [{"capability": name, "state": on} for name, on in enabled.items()]
    await target.execute("migrate-set-capabilities", {"capabilities": capabilities})


async def migrate(target: Target, fd_name: str) -> None:
    """Start writing RAM and device state to the descriptor named ``fd_name``."""
    await target.execute("migrate", {"uri": f"fd:{fd_name}"})


async def migrate_incoming(target: Target, fd_name: str) -> None:
    """Start loading a saved state (QEMU started with ``-incoming defer``)."""
    await target.execute("migrate-incoming", {"uri": f"fd:{fd_name}"})


async def migrate_cancel(target: Target) -> None:
    await target.execute("migrate_cancel")


# -- memory encryption ---------------------------------------------------------

# What QEMU can tell about a confidential guest, per variant: (report key, command).
_ATTESTATION = {
    "sev": (("sev", "query-sev"), ("sev_launch_measure", "query-sev-launch-measure")),
    "sev_es": (("sev", "query-sev"), ("sev_launch_measure", "query-sev-launch-measure")),
    "sev_snp": (("sev", "query-sev"),),
    "tdx": (),
}


async def attestation_queries(target: Callable[[], Target], variant: str) -> dict[str, object]:
    """QEMU's answers about a ``variant`` (sev, sev_es, sev_snp, tdx) guest, by report key
    (``sev``: the platform state, ``sev_launch_measure``: the launch measurement).
    ``target`` is called only when there is something to ask (TDX: nothing)."""
    return {key: await target().execute(command) for key, command in _ATTESTATION[variant]}


# -- the capability probe (QMP on a probe QEMU's stdin) ------------------------

_PROBE = (
    ("negotiate", "qmp_capabilities"),
    ("types", "qom-list-types"),
    ("sev", "query-sev-capabilities"),
    ("quit", "quit"),
)


def probe_requests() -> str:
    """The probe's whole conversation, one request a line, matched back by ``id``."""
    return "".join(json.dumps({"execute": command, "id": i}) + "\n" for i, command in _PROBE)


@dataclass(frozen=True)
class ProbeAnswers:
    """What the probe QEMU answered: its QOM types (None: no list came back, with
    ``failure`` saying what came instead) and ``query-sev-capabilities``'
    ``cbitpos``/``reduced-phys-bits`` (None: ``sev_error`` says why)."""

    types: frozenset[str] | None
    failure: str = ""
    sev: tuple[int, int] | None = None
    sev_error: str = ""


def parse_probe_replies(replies: Sequence[object]) -> ProbeAnswers:
    """Facts from the probe's QMP answers (matched by ``id``)."""
    by_id = {r["id"]: r for r in replies if isinstance(r, dict) and "id" in r}
    types_reply = by_id.get("types", {})
    if not isinstance(types_reply.get("return"), list):
        return ProbeAnswers(
            types=None, failure=f"qom-list-types gave no list: {types_reply or 'no answer'}"
        )
    types = frozenset(
        t["name"] for t in types_reply["return"] if isinstance(t, dict) and "name" in t
    )
    sev_reply = by_id.get("sev", {})
    answer = sev_reply.get("return")
    if isinstance(answer, dict) and "cbitpos" in answer:
        return ProbeAnswers(
            types=types, sev=(int(answer["cbitpos"]), int(answer["reduced-phys-bits"]))
        )
    error = sev_reply.get("error", {})
    desc = error.get("desc") if isinstance(error, dict) else None
    return ProbeAnswers(types=types, sev_error=str(desc or "no answer"))


# -- a live migration between two hosts: TLS, the NBD export, the mirrors -------------
# (verified on QEMU 7.2 here: a ``tls-creds-psk`` object authenticates and encrypts the
# stream and the NBD connections over sockets the server hands over; a destination
# started ``-incoming defer`` exports its still inactive disk nodes writable; a
# ``ready`` mirror cancelled after the stream completes leaves the copy identical)


async def add_tls_psk(target: Target, object_id: str, folder: str, *, server: bool) -> None:
    """Pre-shared-key TLS credentials from ``folder``/keys.psk (``user:hexkey`` lines);
    a client names its user ``hm``."""
    args: dict[str, object] = {"qom-type": "tls-creds-psk", "id": object_id, "dir": folder}
    args |= {"endpoint": "server"} if server else {"endpoint": "client", "username": "hm"}
    await target.execute("object-add", args)


async def use_tls(target: Target, object_id: str, hostname: str | None = None) -> None:
    """Send or receive the migration stream over TLS with ``object_id``'s credentials
    (a sender names the peer; PSK credentials check no name, but QEMU wants one)."""
    params: dict[str, object] = {"tls-creds": object_id}
    if hostname is not None:
        params["tls-hostname"] = hostname
    await target.execute("migrate-set-parameters", params)


async def drop_tls(target: Target, object_id: str) -> None:
    """Back to no TLS for migrations (a local one next), without the credentials."""
    await target.execute("migrate-set-parameters", {"tls-creds": "", "tls-hostname": ""})
    await target.execute("object-del", {"id": object_id})


async def start_nbd_server(target: Target, fd_name: str, tls_id: str, clients: int) -> None:
    """Serve NBD on the listening socket handed over as ``fd_name``, TLS only."""
    await target.execute(
        "nbd-server-start",
        {
            "addr": {"type": "fd", "data": {"str": fd_name}},
            "tls-creds": tls_id,
            "max-connections": clients,
        },
    )


async def export_writable(target: Target, node: str) -> None:
    """Export block node ``node`` over NBD under its own name, writable."""
    await target.execute(
        "block-export-add",
        {"type": "nbd", "id": f"export-{node}", "node-name": node, "name": node, "writable": True},
    )


async def stop_nbd_server(target: Target) -> None:
    """End the NBD server and its exports."""
    await target.execute("nbd-server-stop")


async def add_nbd_target(target: Target, node: str, export: str, fd_name: str, tls_id: str) -> None:
    """A block node ``node`` writing into the peer's NBD export ``export``, over the
    connection handed over as ``fd_name``."""
    await target.execute(
        "blockdev-add",
        {
            "driver": "nbd",
            "node-name": node,
            "server": {"type": "fd", "str": fd_name},
            "export": export,
            "tls-creds": tls_id,
        },
    )


async def del_node(target: Target, node: str) -> None:
    await target.execute("blockdev-del", {"node-name": node})


async def mirror(target: Target, job: str, source: str, dest: str, *, whole: bool) -> None:
    """Copy ``source`` into ``dest`` and keep copying its writes: ``whole`` the whole
    image, else only its top layer (the peer has the layers below)."""
    await target.execute(
        "blockdev-mirror",
        {"job-id": job, "device": source, "target": dest, "sync": "full" if whole else "top"},
    )


@dataclass(frozen=True)
class MirrorJob:
    job: str
    ready: bool
    status: str
    offset: int
    length: int


async def mirror_jobs(target: Target) -> dict[str, MirrorJob]:
    """The block jobs QEMU runs, by id."""
    found = {}
    for raw in _list(await target.execute("query-block-jobs")):
        entry = _dict(raw)
        job = entry.get("device")
        if not isinstance(job, str):
            continue
        offset, length = entry.get("offset"), entry.get("len")
        found[job] = MirrorJob(
            job=job,
            ready=entry.get("ready") is True,
            status=str(entry.get("status")),
            offset=offset if isinstance(offset, int) else 0,
            length=length if isinstance(length, int) else 0,
        )
    return found


async def cancel_mirror(target: Target, job: str) -> None:
    """End a mirror job; one that was ready leaves its target a copy of the source."""
    await target.execute("block-job-cancel", {"device": job})
