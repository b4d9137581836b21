"""``vm snapshot create | list | get | delete | restore`` and ``vm fork``, through the SDK.

``vm hibernate`` is a lifecycle verb (``lifecycle``); ``vm create --from-snapshot``
is ``vm create``'s.
"""

from __future__ import annotations

import argparse
import json
import uuid

from ..client import Client
from ..errors import ValidationFailed
from .output import Output

__all__ = [
    "create_snapshot",
    "delete_snapshot",
    "fork_vm",
    "get_snapshot",
    "list_snapshots",
    "restore_snapshot",
    "snapshot_source",
]

_NAME_MAX = 63  # models.NAME_PATTERN


def create_snapshot(args: argparse.Namespace, hm: Client, out: Output) -> int:
    vm = hm.vms.get(args.vm)
    out.snapshot(vm.snapshots.create(args.name, memory=args.memory, wait=args.wait))
    return 0


def list_snapshots(args: argparse.Namespace, hm: Client, out: Output) -> int:
    out.snapshots(hm.vms.get(args.vm).snapshots.list())
    return 0


def get_snapshot(args: argparse.Namespace, hm: Client, out: Output) -> int:
    out.snapshot(hm.vms.get(args.vm).snapshots.get(args.name))
    return 0


def delete_snapshot(args: argparse.Namespace, hm: Client, out: Output) -> int:
    vm = hm.vms.get(args.vm)
    vm.snapshots.delete(args.name)
    if out.json:
        out.line(json.dumps({"vm_id": vm.id, "name": args.name, "deleted": True}))
    else:
        out.line(args.name if out.quiet else f"deleted snapshot {args.name} of {vm.name}")
    return 0


def restore_snapshot(args: argparse.Namespace, hm: Client, out: Output) -> int:
    vm = hm.vms.get(args.vm)
    out.vm(vm.snapshots.restore(args.name, wait=args.wait))
    return 0


def fork_vm(args: argparse.Namespace, hm: Client, out: Output) -> int:
    """The children as a table (``-q``: their ids), named ``--name`` or ``PARENT-fork-XXXX``."""
    parent = hm.vms.get(args.vm)
    suffix = f"-fork-{uuid.uuid4().hex[:4]}"
    name = args.name or parent.name[: _NAME_MAX - len(suffix) - 3] + suffix  # room for -16
    children = parent.fork(
        name, snapshot=args.snapshot, count=args.count, wait=args.wait, timeout=args.timeout
    )
    out.vms(child.info for child in children)
    return 0


def snapshot_source(text: str, hm: Client) -> tuple[str, str]:
    """``VM/SNAPSHOT`` (the VM by name or id) as ``(vm_id, snapshot)``."""
    vm, sep, snapshot = text.partition("/")
    if not (sep and vm and snapshot):
        raise ValidationFailed("--from-snapshot looks like VM/SNAPSHOT", value=text)
    return hm.vms.get(vm).id, snapshot
