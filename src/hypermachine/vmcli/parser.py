"""The ``hypermachine vm …`` and ``hypermachine completion`` commands (argparse, like the rest).

Every ``vm`` verb takes ``--server``/``--api-key`` (``HM_SERVER``/``HM_API_KEY``),
``-o table|json`` (``--json``) and ``-q``. Exit status: 0, the command's own for
``vm exec``, 1 for an API error (its code printed), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..models import VmState

if TYPE_CHECKING:
    from ..client import Client

__all__ = ["add_client_commands"]

Handler = Callable[..., int]


def _ask(parsed_args: argparse.Namespace, question: Callable[[Client], list[str]]) -> list[str]:
    """Shell completion's answers from the server (nothing if it cannot be reached)."""
    from ..client import Client

    try:
        with Client(parsed_args.server, parsed_args.api_key, timeout=2, max_retries=0) as hm:
            return question(hm)
    except Exception:  # completion must never print a traceback into the shell
        return []


def _vm_names(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """VM names and ids."""
    return _ask(parsed_args, lambda hm: [ref for vm in hm.vms.list() for ref in (vm.name, vm.id)])


def _snapshot_names(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """The snapshots of the VM named before."""
    return _ask(
        parsed_args, lambda hm: [s.name for s in hm.vms.get(parsed_args.vm).snapshots.list()]
    )


def _snapshot_refs(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """``--from-snapshot``: ``VM/`` for each VM, then that VM's ``VM/SNAPSHOT``s."""
    vm, sep, _snapshot = prefix.partition("/")
    if not sep:
        return [f"{name}/" for name in _vm_names(prefix, parsed_args)]
    return _ask(parsed_args, lambda hm: [f"{vm}/{s.name}" for s in hm.vms.get(vm).snapshots.list()])


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server", default=os.environ.get("HM_SERVER"),
        help="the server's URL (HM_SERVER; default http://127.0.0.1:8080)",
    )  # fmt: skip
    common.add_argument(
        "--api-key", default=os.environ.get("HM_API_KEY"), help="API key (HM_API_KEY)"
    )
    common.add_argument("-o", "--output", choices=["table", "json"], default="table")
    common.add_argument("--json", dest="output", action="store_const", const="json")
    common.add_argument("-q", "--quiet", action="store_true", help="print VM ids only")
    return common


def _vm_arg(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    if many:
        arg = parser.add_argument("vms", metavar="VM", nargs="+", help="VM names or ids")
    else:
        arg = parser.add_argument("vm", metavar="VM", help="a VM name or id")
    arg.completer = _vm_names  # type: ignore[attr-defined]


def _verb(
    verbs: Any, name: str, handler: str, common: argparse.ArgumentParser, help: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = verbs.add_parser(name, parents=[common], help=help)
    parser.set_defaults(run=_dispatch, handler=handler)
    return parser


def _add_create(verbs: Any, common: argparse.ArgumentParser) -> None:
    create = _verb(verbs, "create", "lifecycle.create_vm", common, "make a VM")
    create.add_argument("name")
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="a catalogue image (see `image list`)")
    source.add_argument(
        "--from-snapshot", metavar="VM/SNAPSHOT",
        help="resume a VM's snapshot as a new VM (its spec; hibernated unless --start)",
    ).completer = _snapshot_refs  # type: ignore[attr-defined]  # fmt: skip
    create.add_argument("--cpus", type=int)
    create.add_argument("--memory", type=int, metavar="MB")
    create.add_argument("--disk", type=int, metavar="GB")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--network", choices=["nat", "bridge", "none"], help="default nat")
    create.add_argument("--bridge", help="the host bridge (--network bridge)")
    create.add_argument("--ip", help="a static IPv4 address (--network bridge)")
    create.add_argument(
        "--port", action="append", default=[], metavar="HOST:GUEST[/udp]",
        help="forward a host port to the guest (--network nat)",
    )  # fmt: skip
    create.add_argument("--start", action="store_true", help="boot it at once")
    create.add_argument("--wait", action="store_true", help="return once it has settled")


def _add_lifecycle(verbs: Any, common: argparse.ArgumentParser) -> None:
    for action, text in (
        ("start", "launch QEMU"),
        ("stop", "ACPI power-down (--force: quit QEMU at once)"),
        ("pause", "pause the vCPUs"),
        ("resume", "resume the vCPUs"),
        ("reboot", "reset the machine"),
        ("hibernate", "save RAM to disk and end QEMU (start resumes it)"),
    ):
        verb = _verb(verbs, action, "lifecycle.vm_action", common, text)
        verb.set_defaults(action=action)
        _vm_arg(verb, many=True)
        if action in ("start", "stop"):
            verb.add_argument("--wait", action="store_true", help="return once it has settled")
            verb.add_argument("--timeout", type=float, metavar="S")
        if action == "stop":
            verb.add_argument("--force", action="store_true")
    delete = _verb(verbs, "delete", "lifecycle.delete_vms", common, "delete VMs and their disks")
    _vm_arg(delete, many=True)
    delete.add_argument("--force", action="store_true", help="also a live VM (killed first)")


def _add_guest(verbs: Any, common: argparse.ArgumentParser) -> None:
    run = _verb(verbs, "exec", "guest.exec_command", common, "run a command in the guest")
    _vm_arg(run)
    run.add_argument(
        "command", nargs=argparse.REMAINDER, help="[--] COMMAND [ARG …] (options go before VM)"
    )
    run.add_argument("-i", "--interactive", action="store_true", help="send stdin (to its end)")
    run.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("--timeout", type=float, metavar="S", help="kill the command after S")
    copy = _verb(verbs, "cp", "guest.copy", common, "copy a file: ./f VM:/path or VM:/path ./f")
    copy.add_argument("source")
    copy.add_argument("dest")
    for verb in (run, copy):
        verb.add_argument(
            "--wait-agent", type=float, default=60.0, metavar="S",
            help="wait this long for the guest agent (default 60)",
        )  # fmt: skip
    logs = _verb(verbs, "logs", "guest.show_logs", common, "the serial console log")
    _vm_arg(logs)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--tail", type=int, default=100, metavar="N")
    console = _verb(
        verbs, "console", "terminal.console", common, "the serial console here (leave: Ctrl-])"
    )
    _vm_arg(console)
    script = _verb(verbs, "script", "guest.run_script", common, "run a Rhai script on the VM")
    _vm_arg(script)
    script.add_argument("file", help="the script (- for stdin)")
    script.add_argument("--args", default="{}", help="JSON object the script sees as `args`")


def _add_snapshots(verbs: Any, common: argparse.ArgumentParser) -> None:
    snapshot = verbs.add_parser("snapshot", help="snapshots of a VM: create, list, restore, …")
    actions = snapshot.add_subparsers(dest="snapshot_command", required=True, metavar="ACTION")
    for action, text in (
        ("create", "save the disk (--memory: and RAM, of a live VM)"),
        ("list", "the VM's snapshots"),
        ("get", "one snapshot"),
        ("delete", "delete a snapshot (the VM is untouched)"),
        ("restore", "put the VM back to a snapshot (what ran since is lost)"),
    ):
        handler = "snapshots.list_snapshots" if action == "list" else f"snapshots.{action}_snapshot"
        verb = _verb(actions, action, handler, common, text)
        _vm_arg(verb)
        if action != "list":
            name = verb.add_argument("name", metavar="NAME", help="the snapshot's name")
            if action != "create":
                name.completer = _snapshot_names  # type: ignore[attr-defined]
        if action in ("create", "restore"):
            verb.add_argument(
                "--no-wait", dest="wait", action="store_false", help="return at once (202)"
            )
    actions.choices["create"].add_argument("--memory", action="store_true", help="save RAM too")
    fork = _verb(verbs, "fork", "snapshots.fork_vm", common, "new VMs carrying on from a VM's RAM")
    _vm_arg(fork)
    fork.add_argument("--name", help="the child's name (several: NAME-1, …; default VM-fork-XXXX)")
    fork.add_argument(
        "--snapshot", help="a memory snapshot to fork from (default: an instant one)"
    ).completer = _snapshot_names  # type: ignore[attr-defined]
    fork.add_argument("--count", type=int, default=1, metavar="K", help="how many (1-16)")
    fork.add_argument("--wait", action="store_true", help="return once each child runs")
    fork.add_argument("--timeout", type=float, metavar="S")


def _add_watch(verbs: Any, common: argparse.ArgumentParser) -> None:
    metrics = _verb(verbs, "metrics", "lifecycle.show_metrics", common, "CPU, memory, disk")
    _vm_arg(metrics)
    events = _verb(verbs, "events", "lifecycle.show_events", common, "the event log")
    events.add_argument("-f", "--follow", action="store_true", help="print events as they come")
    events.add_argument("--vm", help="only this VM's events")
    events.add_argument("--since", type=int, metavar="ID", help="after this event id")


def add_client_commands(commands: Any) -> None:
    """Register ``vm`` and ``completion`` on the top-level subparsers."""
    common = _common()
    vm = commands.add_parser("vm", help="VMs on a server: list, create, exec, console, …")
    verbs = vm.add_subparsers(dest="vm_command", required=True, metavar="VERB")
    listing = _verb(verbs, "list", "lifecycle.list_vms", common, "list VMs")
    listing.add_argument("--state", action="append", choices=[s.value for s in VmState], default=[])
    listing.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    listing.add_argument("--name")
    _add_create(verbs, common)
    get = _verb(verbs, "get", "lifecycle.get_vm", common, "one VM in detail")
    _vm_arg(get)
    _add_lifecycle(verbs, common)
    _add_snapshots(verbs, common)
    _add_guest(verbs, common)
    _add_watch(verbs, common)

    completion = commands.add_parser("completion", help="shell completion: bash or zsh")
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(run=_completion)


def _completion(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    print(shellcode(["hypermachine"], shell=args.shell))
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    from .run import run

    return run(args)
