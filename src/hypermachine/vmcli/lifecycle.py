"""The VM verbs: list, create, get, start, stop, pause, resume, reboot, delete, metrics, events.

Each handler takes the parsed flags, a ``Client`` and an ``Output``, and returns the exit code.
"""

from __future__ import annotations

import argparse

from ..client import Client, VmHandle
from ..errors import ValidationFailed
from ..models import NetworkSpec, PortForward
from .output import Output

__all__ = [
    "create_vm",
    "delete_vms",
    "get_vm",
    "list_vms",
    "show_events",
    "show_metrics",
    "vm_action",
]


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
    network = NetworkSpec(
        type=args.network, bridge=args.bridge, ip=args.ip, ports=[_port(p) for p in args.port]
    )
    spec = {"cpus": args.cpus, "memory_mb": args.memory, "disk_gb": args.disk}
    vm = hm.vms.create(
        name=args.name,
        image=args.image,
        start=args.start,
        wait=args.wait,
        labels=pairs(args.label, "labels"),
        network=network,
        **{key: value for key, value in spec.items() if value is not None},
    )
    out.vm(vm.info)
    return 0


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
    """start, stop, pause, resume or reboot each VM named, in turn."""
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
