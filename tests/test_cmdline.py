"""The QEMU command line: complete, and immune to option injection."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypermachine.hypervisor.devices.network import mac_address
from hypermachine.hypervisor.qemu.argv import BootSource, escape_option
from hypermachine.hypervisor.vm_argv import build_argv
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from hypermachine.models import NAME_PATTERN, Vm, VmState

UUID = "0b6c1a9e-7d7e-4b8e-9a53-1d2f3e4a5b6c"
PATHS = VmPaths(vm_dir=Path("/var/lib/hm/vms/vm-1"), run_dir=Path("/run/hm/vm-1"))


def make_vm(**fields: object) -> Vm:
    now = datetime.now(UTC)
    base: dict[str, object] = {
        "id": "vm-0b6c1a9e7d7e",
        "uuid": UUID,
        "name": "web-1",
        "image": "tiny",
        "state": VmState.STOPPED,
        "created_at": now,
        "updated_at": now,
    }
    return Vm.model_validate({**base, **fields})


def argv_for(vm: Vm, boot: BootSource | None = None, accel: str = "tcg") -> list[str]:
    return build_argv(
        vm,
        boot or BootSource(),
        PATHS,
        qemu_binary="qemu-system-x86_64",
        accelerator=accel,
        qmp_fd=7,
        nic_fd=8,
    )


def option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_basic_shape() -> None:
    argv = argv_for(make_vm(cpus=2, memory_mb=2048))
    assert argv[0] == "qemu-system-x86_64"
    assert option(argv, "-smp") == ["2"]
    assert option(argv, "-m") == ["2048M"]
    assert option(argv, "-uuid") == [UUID]
    assert option(argv, "-accel") == ["tcg"]
    assert "-cpu" not in argv  # -cpu host is for KVM only
    assert "-nodefaults" in argv and "-S" in argv
    assert option(argv, "-display") == ["none"]
    assert option(argv, "-pidfile") == [str(PATHS.pidfile)]
    assert any("fd=7" in c and "id=qmp" in c for c in option(argv, "-chardev"))
    assert option(argv, "-sandbox")[0].startswith("on,obsolete=deny")


def test_kvm_uses_host_cpu() -> None:
    argv = argv_for(make_vm(), accel="kvm")
    assert option(argv, "-accel") == ["kvm"]
    assert option(argv, "-cpu") == ["host"]


def test_disk_and_nic_are_json() -> None:
    argv = argv_for(make_vm())
    blockdevs = [json.loads(b) for b in option(argv, "-blockdev")]
    assert blockdevs[0] == {
        "driver": "file",
        "node-name": "disk0-file",
        "filename": str(PATHS.disk),
    }
    assert blockdevs[1]["file"] == "disk0-file"
    devices = [json.loads(d) for d in option(argv, "-device")]
    nic = next(d for d in devices if d["driver"] == "virtio-net-pci")
    assert nic["mac"] == mac_address(UUID)
    netdev = json.loads(option(argv, "-netdev")[0])
    assert netdev == {"type": "stream", "id": "net0", "server": False,
                      "addr": {"type": "fd", "str": "8"}}  # fmt: skip


def test_network_none_has_no_nic() -> None:
    argv = argv_for(make_vm(network={"type": "none"}))
    assert "-netdev" not in argv
    assert all(json.loads(d)["driver"] != "virtio-net-pci" for d in option(argv, "-device"))


def test_direct_kernel_boot() -> None:
    boot = BootSource(
        kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd"), append="console=ttyS0"
    )
    argv = argv_for(make_vm(), boot)
    assert option(argv, "-kernel") == ["/img/vmlinuz"]
    assert option(argv, "-initrd") == ["/img/initrd"]
    assert option(argv, "-append") == ["console=ttyS0"]


def test_disk_boot_has_no_kernel() -> None:
    assert "-kernel" not in argv_for(make_vm())


def test_mac_is_stable_and_local() -> None:
    assert mac_address(UUID) == mac_address(UUID)
    assert mac_address(UUID) != mac_address(UUID, nic=1)
    assert mac_address(UUID).startswith("52:54:00:")


def test_escape_option_doubles_commas() -> None:
    assert escape_option("a,b") == "a,,b"
    with pytest.raises(ValueError):
        escape_option("a\nb")


@pytest.mark.parametrize(
    "path",
    [Path("relative/disk.qcow2"), Path("/tmp/a\nb")],
)
def test_bad_host_paths_are_refused(path: Path) -> None:
    paths = VmPaths(vm_dir=path, run_dir=Path("/run/hm/x"))
    with pytest.raises(ValueError):
        build_argv(
            make_vm(), BootSource(), paths, qemu_binary="q", accelerator="tcg", qmp_fd=3, nic_fd=4
        )


def test_comma_in_data_dir_cannot_inject() -> None:
    paths = VmPaths(vm_dir=Path("/data,file=/etc/passwd/vm"), run_dir=Path("/run/a,b=c/vm"))
    argv = build_argv(
        make_vm(), BootSource(), paths, qemu_binary="q", accelerator="tcg", qmp_fd=3, nic_fd=4
    )
    serial = next(c for c in option(argv, "-chardev") if c.startswith("socket,id=serial0"))
    assert "/data,,file=/etc/passwd/vm/console.log" in serial
    assert "/run/a,,b=c/vm/serial.sock" in serial


def _split_options(value: str) -> list[str]:
    """Split a QEMU option string the way QEMU does (',,' is a literal comma)."""
    parts, current, i = [], "", 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1 : i + 2] == ",":
                current += ","
                i += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += value[i]
        i += 1
    parts.append(current)
    return parts


@given(st.from_regex(NAME_PATTERN, fullmatch=True))
def test_any_valid_name_stays_one_option(name: str) -> None:
    argv = argv_for(make_vm(name=name))
    parts = _split_options(option(argv, "-name")[0])
    assert parts[0] == f"guest={name}"
    assert [p.split("=")[0] for p in parts] == ["guest", "process", "debug-threads"]


@given(st.text(min_size=1, max_size=40).filter(lambda s: all(31 < ord(c) != 127 for c in s)))
def test_escaped_values_split_back_to_themselves(value: str) -> None:
    assert _split_options(escape_option(value)) == [value]


def test_guest_agent_channel() -> None:
    argv = argv_for(make_vm())
    chardevs = [c for c in option(argv, "-chardev") if c.startswith("socket,id=qga0,")]
    assert chardevs == [f"socket,id=qga0,path={PATHS.qga_socket},server=on,wait=off"]
    devices = [json.loads(d) for d in option(argv, "-device") if d.startswith("{")]
    port = [d for d in devices if d["driver"] == "virtserialport"]
    assert port == [
        {"driver": "virtserialport", "bus": "vser0.0", "chardev": "qga0",
         "name": "org.qemu.guest_agent.0"}
    ]  # fmt: skip
    assert any(d["driver"] == "virtio-serial-pci" and d["id"] == "vser0" for d in devices)


def test_no_display_by_default() -> None:
    argv = argv_for(make_vm())
    assert "-vnc" not in argv
    assert not any("VGA" in d for d in option(argv, "-device"))


def test_vnc_display_is_a_unix_socket_in_the_run_dir() -> None:
    argv = argv_for(make_vm(display={"type": "vnc"}))
    assert option(argv, "-vnc") == [f"unix:{PATHS.vnc_socket}"]
    assert {"driver": "VGA", "id": "video0"} in [
        json.loads(d) for d in option(argv, "-device") if d.startswith("{")
    ]


def test_vnc_socket_path_cannot_inject() -> None:
    paths = VmPaths(vm_dir=Path("/data/vm"), run_dir=Path("/run/a,password=on/vm"))
    vm = make_vm(display={"type": "vnc"})
    argv = build_argv(
        vm, BootSource(), paths, qemu_binary="q", accelerator="tcg", qmp_fd=3, nic_fd=8
    )
    assert option(argv, "-vnc") == ["unix:/run/a,,password=on/vm/vnc.sock"]
