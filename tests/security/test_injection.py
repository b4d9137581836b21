"""No client-controlled field can add a QEMU option.

For every field a client sets, any value the models accept must leave the command
line with the same *shape* as a harmless value: the same flags in the same places,
each comma-parsed option with the same keys, each JSON option with the same keys.
(Values the models refuse never reach QEMU.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hypermachine.hypervisor.cmdline import BootSource, build_argv
from hypermachine.hypervisor.layout import VmPaths
from hypermachine.models import CreateVmRequest, Vm, VmState

PATHS = VmPaths(vm_dir=Path("/var/lib/hm/vms/vm-1"), run_dir=Path("/run/hm/vm-1"))
BOOT = BootSource(kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd"), append="quiet")
BASE: dict[str, Any] = {"name": "web-1", "image": "tiny"}

# Characters QEMU's option parsers or a shell would care about, plus ordinary ones.
NASTY = st.text(
    alphabet=st.sampled_from(list(",=-{}[]\"':;/\\.\n\r\t\x00 ") + list("abcXYZ019_é\u202e")),
    max_size=40,
)
INJECTIONS = [
    "x,file=/etc/passwd",
    "x,,process=pwned",
    "-readconfig /etc/passwd",
    'x","driver":"vfio-pci',
    "x\n-device e1000",
    "../../../etc/shadow",
    "10.0.0.5,hostfwd=tcp::22-:22",
    "0000:00:02.0,romfile=/etc/passwd",
]


def _split(value: str) -> list[str]:
    parts, current, i = [], "", 0
    while i < len(value):
        if value[i] == "," and value[i + 1 : i + 2] == ",":
            current, i = current + ",", i + 2
        elif value[i] == ",":
            parts.append(current)
            current, i = "", i + 1
        else:
            current, i = current + value[i], i + 1
    return [*parts, current]


def _shape(argv: list[str]) -> list[object]:
    shape: list[object] = []
    for arg in argv:
        if arg.startswith("-"):
            shape.append(arg)
        elif arg.startswith("{"):
            shape.append(("json", sorted(json.loads(arg))))
        else:
            shape.append(("opts", [part.split("=", 1)[0] for part in _split(arg)]))
    return shape


def _argv(request: dict[str, Any]) -> list[str] | None:
    """The argv for a VM created from ``request``, or None when the models refuse it."""
    try:
        spec = CreateVmRequest.model_validate(request)
    except ValidationError:
        return None
    now = datetime.now(UTC)
    vm = Vm(
        **spec.model_dump(exclude={"start", "wait"}),
        id="vm-0b6c1a9e7d7e", uuid="0b6c1a9e-7d7e-4b8e-9a53-1d2f3e4a5b6c",
        state=VmState.STOPPED, created_at=now, updated_at=now, tenant="t",
    )  # fmt: skip
    try:
        return build_argv(
            vm,
            BOOT,
            PATHS,
            qemu_binary="qemu-system-x86_64",
            accelerator="tcg",
            qmp_fd=7,
            nic_fd=8,
        )
    except ValueError:
        return None  # the builder refuses rather than emit something unsafe


BASELINE = _shape(_argv(BASE) or [])


def _check(request: dict[str, Any]) -> None:
    argv = _argv(request)
    if argv is not None:
        assert _shape(argv) == BASELINE, request


# One entry per client-controlled field: how a value is placed in the request.
FIELDS = {
    "name": lambda v: {**BASE, "name": v},
    "image": lambda v: {**BASE, "image": v},
    "label-key": lambda v: {**BASE, "labels": {v: "x"}},
    "label-value": lambda v: {**BASE, "labels": {"k": v}},
    "ip": lambda v: {**BASE, "network": {"type": "bridge", "ip": v}},
    "network-type": lambda v: {**BASE, "network": {"type": v}},
    "memory": lambda v: {**BASE, "memory_mb": v},
    "cpus": lambda v: {**BASE, "cpus": v},
}


def test_known_injections_change_nothing() -> None:
    assert BASELINE and "-sandbox" in BASELINE
    for place in FIELDS.values():
        for value in INJECTIONS:
            _check(place(value))


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from(sorted(FIELDS)), value=NASTY)
def test_any_value_of_any_field_keeps_the_shape(field: str, value: str) -> None:
    _check(FIELDS[field](value))


@settings(max_examples=50, deadline=None)
@given(name=st.from_regex(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", fullmatch=True))
def test_every_accepted_name_reaches_qemu_verbatim(name: str) -> None:
    argv = _argv({**BASE, "name": name})
    assume(argv is not None)
    assert argv is not None
    assert _split(argv[argv.index("-name") + 1])[0] == f"guest={name}"
