"""No client-controlled field can add a QEMU option.

For every field a client sets, any value the models accept must leave the command
line with the same *shape* as a harmless value in the same place: the same flags in
the same places, each comma-parsed option with the same keys (a leading bare value
is a value, not a key), each JSON option with the same keys. (Values the models
refuse never reach QEMU.) The VM goes through the same network planning as on a
real create, and its GPU and platform parts are filled as a start fills them.
Hypothesis runs derandomized: the same examples on every run, so CI is deterministic.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hypermachine.config import BridgeConfig
from hypermachine.errors import HMError
from hypermachine.hypervisor.devices import network
from hypermachine.hypervisor.qemu.argv import BootSource, Platform
from hypermachine.hypervisor.vm_argv import build_argv
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from hypermachine.models import CreateVmRequest, GpuAssignment, Vm, VmState

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
            parts = _split(arg)
            keys = [part.split("=", 1)[0] if "=" in part else "<value>" for part in parts]
            shape.append(("opts", keys))
    return shape


NET = network.NetworkConfig(
    bridges=(BridgeConfig("br0", ipaddress.IPv4Network("10.9.0.0/24"), None),),
    forward_address="127.0.0.1",
)


def _started(spec: CreateVmRequest) -> tuple[Vm, Platform]:
    """The VM as a create plans it and a start fills it (network, GPU, firmware, TPM)."""
    now = datetime.now(UTC)
    vm_id, vm_uuid = "vm-0b6c1a9e7d7e", "0b6c1a9e-7d7e-4b8e-9a53-1d2f3e4a5b6c"
    planned, info = network.plan(spec.network, vm_id, vm_uuid, NET, [])
    gpu = None
    if spec.gpu.enabled and spec.gpu.type == "passthrough":
        gpu = GpuAssignment(type="passthrough", devices=[spec.gpu.device or "0000:01:00.0"])
    vm = Vm(
        **spec.model_dump(exclude={"start", "wait", "network"}),
        network=planned, network_info=info, gpu_assignment=gpu,
        id=vm_id, uuid=vm_uuid, state=VmState.STOPPED, created_at=now, updated_at=now,
        tenant="t",
    )  # fmt: skip
    uefi = spec.firmware == "uefi" or spec.security.secure_boot
    platform = Platform(
        firmware_code=Path("/usr/share/OVMF/OVMF_CODE_4M.fd") if uefi else None,
        firmware_vars=PATHS.vm_dir / "vars.fd" if uefi else None,
        secure_boot=spec.security.secure_boot,
        tpm_socket=PATHS.run_dir / "tpm.sock" if spec.security.vtpm else None,
    )
    return vm, platform


def _argv(request: dict[str, Any]) -> list[str] | None:
    """The argv for a VM created from ``request``, or None when the models refuse it."""
    try:
        vm, platform = _started(CreateVmRequest.model_validate(request))
    except (ValidationError, HMError):
        return None  # refused before QEMU (by the models or the network planner)
    try:
        return build_argv(
            vm,
            BOOT,
            PATHS,
            qemu_binary="qemu-system-x86_64",
            accelerator="tcg",
            qmp_fd=7,
            platform=platform,
            nic_fd=8,
        )
    except ValueError:
        return None  # the builder refuses rather than emit something unsafe


Place = Callable[[Any], dict[str, Any]]
_BRIDGE = {"type": "bridge", "bridge": "br0"}
# Every client-controlled field: how a value is placed in a request, and a harmless value
# whose command line is the shape every other accepted value must keep. (The SEV policy
# reaches QEMU only as a number the host's launch data carries: tests/test_security_argv.py.)
FIELDS: dict[str, tuple[Place, Any]] = {
    "name": (lambda v: {**BASE, "name": v}, "web-1"),
    "image": (lambda v: {**BASE, "image": v}, "tiny"),
    "label-key": (lambda v: {**BASE, "labels": {v: "x"}}, "k"),
    "label-value": (lambda v: {**BASE, "labels": {"k": v}}, "x"),
    "memory": (lambda v: {**BASE, "memory_mb": v}, 1024),
    "cpus": (lambda v: {**BASE, "cpus": v}, 1),
    "disk": (lambda v: {**BASE, "disk_gb": v}, 10),
    "network-type": (lambda v: {**BASE, "network": {"type": v}}, "nat"),
    "mac": (lambda v: {**BASE, "network": {"type": "nat", "mac": v}}, "52:54:00:12:34:56"),
    "bridge": (lambda v: {**BASE, "network": {**_BRIDGE, "bridge": v}}, "br0"),
    "ip": (lambda v: {**BASE, "network": {**_BRIDGE, "ip": v}}, "10.9.0.5"),
    "port-host": (
        lambda v: {**BASE, "network": {"type": "nat", "ports": [{"host": v, "guest": 80}]}},
        8080,
    ),
    "port-guest": (
        lambda v: {**BASE, "network": {"type": "nat", "ports": [{"host": 8080, "guest": v}]}},
        80,
    ),
    "port-protocol": (
        lambda v: {
            **BASE,
            "network": {"type": "nat", "ports": [{"host": 8080, "guest": 80, "protocol": v}]},
        },
        "tcp",
    ),
    "cloud-init-user-data": (lambda v: {**BASE, "cloud_init": {"user_data": v}}, "#cloud-config"),
    "cloud-init-hostname": (lambda v: {**BASE, "cloud_init": {"hostname": v}}, "web"),
    "cloud-init-key": (
        lambda v: {**BASE, "cloud_init": {"ssh_authorized_keys": [v]}},
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me",
    ),
    "gpu-device": (lambda v: {**BASE, "gpu": {"device": v}}, "0000:01:00.0"),
    "gpu-type": (lambda v: {**BASE, "gpu": {"type": v}}, "passthrough"),
    "gpu-profile": (lambda v: {**BASE, "gpu": {"type": "vgpu", "profile": v}}, "nvidia-63"),
    "firmware": (lambda v: {**BASE, "firmware": v}, "uefi"),
    "secure-boot": (lambda v: {**BASE, "security": {"secure_boot": v}}, True),
    "vtpm": (lambda v: {**BASE, "security": {"vtpm": v}}, True),
    "memory-encryption": (lambda v: {**BASE, "security": {"memory_encryption": v}}, "none"),
}
BASELINES = {name: _argv(place(harmless)) for name, (place, harmless) in FIELDS.items()}


def _check(field: str, value: Any) -> None:
    place, _ = FIELDS[field]
    argv = _argv(place(value))
    if argv is not None:
        baseline = BASELINES[field]
        assert baseline is not None, f"{field}: the harmless value is refused"
        assert _shape(argv) == _shape(baseline), (field, value)


def test_every_harmless_value_is_accepted() -> None:
    for field, argv in BASELINES.items():
        assert argv is not None and "-sandbox" in argv, field


def test_known_injections_change_nothing() -> None:
    for field in FIELDS:
        for value in INJECTIONS:
            _check(field, value)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(field=st.sampled_from(sorted(FIELDS)), value=NASTY)
def test_any_value_of_any_field_keeps_the_shape(field: str, value: str) -> None:
    _check(field, value)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(name=st.from_regex(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", fullmatch=True))
def test_every_accepted_name_reaches_qemu_verbatim(name: str) -> None:
    argv = _argv({**BASE, "name": name})
    assume(argv is not None)
    assert argv is not None
    assert _split(argv[argv.index("-name") + 1])[0] == f"guest={name}"
