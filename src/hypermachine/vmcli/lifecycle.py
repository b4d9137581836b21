"""The VM verbs: list, create, get, start, stop, pause, resume, reboot, hibernate, delete,
metrics, events.

Each handler takes the parsed flags, a ``Client`` and an ``Output``, and returns the exit code.
"""

from __future__ import annotations

import argparse

from ..client import Client, VmHandle
from ..errors import ValidationFailed
from ..models import NetworkSpec, PortForward
from .output import Output
from .snapshots import snapshot_source

__all__ = [
    "create_vm",
    "delete_vms",
    "get_vm",
    "list_vms",
    "show_events",
    "show_metrics",
    "vm_action",
]


# vm create's flags that an image VM takes and a VM from a snapshot does not (dest: flag).
_SPEC_FLAGS = {"cpus": "--cpus", "memory": "--memory", "disk": "--disk", "network": "--network",
               "bridge": "--bridge", "ip": "--ip", "port": "--port"}  # fmt: skip


def pairs(items: list[str], what: str) -> dict[str, str]:
    """``["k=v", …]`` as a dict; anything without ``=`` is a clear error."""
    found: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationFailed(f"{what} look like KEY=VALUE", value=item)
        found[key] = value
    return found


def _port(text: str) -> PortForward:
    """``HOST:GUEST`` or ``HOST:GUEST/udp``."""
    ports, _, protocol = text.partition("/")
    host, sep, guest = ports.partition(":")
    if not (sep and host.isdigit() and guest.isdigit()):
        raise ValidationFailed("a port forward looks like HOST:GUEST or HOST:GUEST/udp", value=text)
    return PortForward.model_validate(
        {"host": int(host), "guest": int(guest), "protocol": protocol or "tcp"}
    )


def list_vms(args: argparse.Namespace, hm: Client, out: Output) -> int:
    labels = pairs(args.label, "label filters")
    out.vms(vm.info for vm in hm.vms.list(state=args.state, labels=labels, name=args.name))
    return 0


def create_vm(args: argparse.Namespace, hm: Client, out: Output) -> int:
    """From ``--image`` with the spec flags, or from ``--from-snapshot VM/SNAP`` (its spec)."""
    labels = pairs(args.label, "labels")
    make = _from_snapshot if args.from_snapshot else _from_image
    out.vm(make(args, hm, labels).info)
    return 0


def _from_image(args: argparse.Namespace, hm: Client, labels: dict[str, str]) -> VmHandle:
    network = NetworkSpec(
        type=args.network or "nat", bridge=args.bridge, ip=args.ip,
        ports=[_port(p) for p in args.port],
    )  # fmt: skip
    spec = {"cpus": args.cpus, "memory_mb": args.memory, "disk_gb": args.disk}
    return hm.vms.create(
        name=args.name, image=args.image, start=args.start, wait=args.wait, labels=labels,
        network=network, **{key: value for key, value in spec.items() if value is not None},
    )  # fmt: skip


def _from_snapshot(args: argparse.Namespace, hm: Client, labels: dict[str, str]) -> VmHandle:
    given = [flag for dest, flag in _SPEC_FLAGS.items() if getattr(args, dest)]
    if given:
        raise ValidationFailed(
            "a VM from a snapshot has the snapshot's spec: drop " + ", ".join(given), flags=given
        )
    source = snapshot_source(args.from_snapshot, hm)
    return hm.vms.create(
        name=args.name, from_snapshot=source, start=args.start, wait=args.wait, labels=labels
    )


def get_vm(args: argparse.Namespace, hm: Client, out: Output) -> int:
    out.details(hm.vms.get(args.vm).info)
    return 0


def _act(vm: VmHandle, args: argparse.Namespace) -> None:
    if args.action == "start":
        vm.start(wait=args.wait, timeout=args.timeout)
    elif args.action == "stop":
        vm.stop(force=args.force, wait=args.wait, timeout=args.timeout)
    else:
        getattr(vm, args.action)()


def vm_action(args: argparse.Namespace, hm: Client, out: Output) -> int:
    """start, stop, pause, resume, reboot or hibernate each VM named, in turn."""
    for ref in args.vms:
        vm = hm.vms.get(ref)
        _act(vm, args)
        out.vm(vm.info)
    return 0


def delete_vms(args: argparse.Namespace, hm: Client, out: Output) -> int:
    for ref in args.vms:
        vm = hm.vms.get(ref)
        vm.delete(force=args.force)
        if out.json:
            out.line(f'{{"id": "{vm.id}", "deleted": true}}')
        else:
            out.line(vm.id if out.quiet else f"deleted {vm.name} ({vm.id})")
    return 0


def show_metrics(args: argparse.Namespace, hm: Client, out: Output) -> int:
    out.metrics(hm.vms.get(args.vm).metrics())
    return 0


def show_events(args: argparse.Namespace, hm: Client, out: Output) -> int:
    """The log so far (``--since`` an id), or with ``-f`` what happens from now on."""
    vm_id = hm.vms.get(args.vm).id if args.vm else None
    after = args.since if args.since is not None else (None if args.follow else 0)
    for event in hm.events(vm_id=vm_id, after=after, follow=args.follow):
        out.event(event)
    return 0
