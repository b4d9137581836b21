"""GPUs against a fake sysfs (this host has no IOMMU and no GPU): listing, binding,
passing, releasing, vGPU instances, and no device ever given to two VMs.

The fake tree is injected through the one ``sysfs_root`` setting; what the server
writes is read back from its files and from the ``sysfs: PATH <- VALUE`` log.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio

from fakesysfs import FakeSysfs
from hypermachine.api import Services
from hypermachine.cluster.nodes import describe
from hypermachine.config import ConfigError, Settings, load_settings
from hypermachine.errors import DeviceInUse, DeviceUnavailable, Unsupported
from hypermachine.hypervisor.devices.vfio import GpuAllocator, mdev_uuid
from hypermachine.hypervisor.devices.vfio import gpu as gpu_of
from hypermachine.hypervisor.qemu.argv import gpu_args
from hypermachine.models import CreateVmRequest, GpuAssignment, GpuSpec, Vm, VmState
from support import make_settings

GPU, AUDIO, BRIDGE = "0000:01:00.0", "0000:01:00.1", "0000:00:01.0"
NIC, NVME = "0000:05:00.0", "0000:06:00.0"


@pytest.fixture
def sysfs(tmp_path: Path) -> FakeSysfs:
    return FakeSysfs(tmp_path / "sys")


def make_vm(n: int, gpu: dict[str, Any], held: GpuAssignment | None = None) -> Vm:
    now = datetime.now(UTC)
    return Vm(
        id=f"vm-00000000000{n}",
        uuid=f"6b1d2f0e-0000-4000-8000-00000000000{n}",
        name=f"g{n}",
        image="tiny",
        gpu=GpuSpec(enabled=True, **gpu),
        gpu_assignment=held,
        state=VmState.STOPPED,
        created_at=now,
        updated_at=now,
    )


def allocator(sysfs: FakeSysfs, stored: list[Vm] | None = None) -> GpuAllocator:
    return GpuAllocator(sysfs.root, lambda: stored or [], timeout_s=10)


async def holder(gpus: GpuAllocator, address: str) -> str | None:
    listed = await gpus.devices()
    return next(d.in_use_by for d in listed.devices if d.address == address)


def sysfs_writes(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("sysfs: ")]


# -- passthrough ----------------------------------------------------------------------


async def test_passthrough_binds_the_whole_group_and_gives_it_back(
    sysfs: FakeSysfs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hypermachine.hypervisor.devices.vfio")
    gpus = allocator(sysfs)
    vm = make_vm(1, {"device": GPU})
    gpu = await gpus.acquire(vm)
    assert gpu is not None
    assert await holder(gpus, GPU) == vm.id
    assert gpu.devices == [GPU, AUDIO]  # both functions of the card go to the guest
    assert gpu.host_drivers == {GPU: "nouveau", AUDIO: "snd_hda_intel"}  # not the bridge
    assert sysfs_writes(caplog) == [
        f"sysfs: bus/pci/devices/{GPU}/driver_override <- 'vfio-pci'",
        f"sysfs: bus/pci/drivers/nouveau/unbind <- '{GPU}'",
        f"sysfs: bus/pci/drivers_probe <- '{GPU}'",
        f"sysfs: bus/pci/devices/{AUDIO}/driver_override <- 'vfio-pci'",
        f"sysfs: bus/pci/drivers/snd_hda_intel/unbind <- '{AUDIO}'",
        f"sysfs: bus/pci/drivers_probe <- '{AUDIO}'",
    ]
    assert (sysfs.override(GPU), sysfs.override(AUDIO)) == ("vfio-pci", "vfio-pci")
    assert sysfs.read("bus/pci/drivers/nouveau/unbind") == GPU
    assert sysfs.override(BRIDGE) == "(null)\n"  # PCI bridges stay with the host

    for address in (GPU, AUDIO):  # the kernel binds them after drivers_probe
        sysfs.bind_as_kernel(address, "vfio-pci")
    caplog.clear()
    await gpus.release(vm.id, gpu)
    assert sysfs_writes(caplog) == [
        f"sysfs: bus/pci/devices/{GPU}/driver_override <- '\\n'",
        f"sysfs: bus/pci/drivers/vfio-pci/unbind <- '{GPU}'",
        f"sysfs: bus/pci/drivers_probe <- '{GPU}'",
        f"sysfs: bus/pci/devices/{AUDIO}/driver_override <- '\\n'",
        f"sysfs: bus/pci/drivers/vfio-pci/unbind <- '{AUDIO}'",
        f"sysfs: bus/pci/drivers_probe <- '{AUDIO}'",
    ]
    assert await holder(gpus, GPU) is None


def test_passthrough_argv_puts_the_card_behind_a_root_port() -> None:
    vm = make_vm(
        1, {}, GpuAssignment(type="passthrough", devices=[GPU, AUDIO], host_drivers={GPU: None})
    )
    devices = [json.loads(a) for a in gpu_args(gpu_of(vm.gpu_assignment))[1::2]]
    assert devices == [
        {"driver": "pcie-root-port", "id": "gpu-rp0", "bus": "pcie.0", "chassis": 64},
        {"driver": "vfio-pci", "host": GPU, "id": "gpu0-0", "bus": "gpu-rp0", "addr": "00.0",
         "multifunction": True},
        {"driver": "vfio-pci", "host": AUDIO, "id": "gpu0-1", "bus": "gpu-rp0", "addr": "00.1"},
    ]  # fmt: skip


async def test_concurrent_starts_never_share_a_device(sysfs: FakeSysfs) -> None:
    gpus = allocator(sysfs)
    vms = [make_vm(1, {}), make_vm(2, {})]  # "any GPU": there is one passable GPU
    got: dict[str, GpuAssignment | None] = {}
    refused: list[str] = []

    async def start(vm: Vm) -> None:
        try:
            got[vm.id] = await gpus.acquire(vm)
        except DeviceInUse:
            refused.append(vm.id)

    async with trio.open_nursery() as nursery:
        for vm in vms:
            nursery.start_soon(start, vm)
    assert len(got) == 1 and len(refused) == 1
    winner = next(iter(got))
    assert await holder(gpus, GPU) == winner == await holder(gpus, AUDIO)

    with pytest.raises(DeviceInUse) as named:
        await gpus.acquire(make_vm(3, {"device": AUDIO}))  # same IOMMU group
    assert named.value.details["held_by"] == winner

    gpu = got[winner]
    assert gpu is not None
    await gpus.release(winner, gpu)
    loser = next(vm for vm in vms if vm.id == refused[0])
    assert await gpus.acquire(loser) is not None


async def test_reservations_survive_a_restart(sysfs: FakeSysfs) -> None:
    held = GpuAssignment(type="passthrough", devices=[GPU], host_drivers={GPU: "nouveau"})
    gpus = allocator(sysfs, stored=[make_vm(1, {"device": GPU}, held)])
    with pytest.raises(DeviceInUse):
        await gpus.acquire(make_vm(2, {"device": GPU}))


def test_what_cannot_be_passed_through_says_why(sysfs: FakeSysfs, tmp_path: Path) -> None:
    gpus = allocator(sysfs)
    assert gpus.unsupported(make_vm(1, {"device": GPU}).gpu) is None
    reason = gpus.unsupported(make_vm(1, {"device": "0000:00:02.0"}).gpu)
    assert reason is not None and "ISA bridge 0000:00:1f.0" in reason
    assert "no PCI device" in str(gpus.unsupported(make_vm(1, {"device": "0000:09:00.0"}).gpu))
    no_iommu = GpuAllocator(FakeSysfs(tmp_path / "bare", iommu=False).root, list, 10)
    assert "no IOMMU groups" in str(no_iommu.unsupported(make_vm(1, {}).gpu))


@pytest.mark.parametrize(("device", "what"), [(NIC, "Ethernet"), (NVME, "Non-Volatile memory")])
async def test_only_display_devices_are_passed_through_unless_the_operator_allows(
    sysfs: FakeSysfs, caplog: pytest.LogCaptureFixture, device: str, what: str
) -> None:
    caplog.set_level(logging.INFO, logger="hypermachine.hypervisor.devices.vfio")
    vm = make_vm(1, {"device": device})
    with pytest.raises(Unsupported) as refused:
        await allocator(sysfs).acquire(vm)
    unsupported = refused.value.details["unsupported"]
    assert isinstance(unsupported, dict)
    reason = unsupported["gpu"]
    assert f"a {what} controller, not a display device" in reason and "passthrough_allow" in reason
    assert sysfs_writes(caplog) == []  # the host driver keeps it
    assert sysfs.override(device) == "(null)\n"
    # the GPU and its IOMMU-group companion (the card's audio function) are meant for guests
    assert allocator(sysfs).unsupported(make_vm(1, {"device": GPU}).gpu) is None
    assert allocator(sysfs).unsupported(make_vm(1, {"device": AUDIO}).gpu) is None

    allowed = GpuAllocator(sysfs.root, list, timeout_s=10, allowed=[device])
    gpu = await allowed.acquire(vm)
    assert gpu is not None and gpu.devices == [device]
    assert sysfs.override(device) == "vfio-pci"


def test_passthrough_allow_takes_pci_addresses(tmp_path: Path) -> None:
    config = tmp_path / "hm.toml"
    config.write_text(f'passthrough_allow = ["{NIC}"]\n')
    assert load_settings(config_file=config, environ={}).passthrough_allow == (NIC,)
    env = {"HM_PASSTHROUGH_ALLOW": f"{NIC}, {NVME}"}
    assert load_settings(environ=env).passthrough_allow == (NIC, NVME)
    with pytest.raises(ConfigError, match="not a PCI address"):
        load_settings(environ={"HM_PASSTHROUGH_ALLOW": "eth0"})


async def test_the_host_has_changed_since_create(sysfs: FakeSysfs) -> None:
    (sysfs.root / "bus/pci/drivers/vfio-pci/unbind").unlink()
    (sysfs.root / "bus/pci/drivers/vfio-pci/bind").unlink()
    (sysfs.root / "bus/pci/drivers/vfio-pci/new_id").unlink()
    (sysfs.root / "bus/pci/drivers/vfio-pci").rmdir()  # vfio-pci unloaded
    with pytest.raises(Unsupported, match="vfio-pci driver is not loaded"):
        await allocator(sysfs).acquire(make_vm(1, {"device": GPU}))


# -- vGPU ------------------------------------------------------------------------------


async def test_vgpu_creates_and_removes_a_stable_instance(sysfs: FakeSysfs) -> None:
    gpus = allocator(sysfs)
    vm = make_vm(1, {"type": "vgpu"})
    gpu = await gpus.acquire(vm)
    assert gpu is not None
    instance = mdev_uuid(vm.uuid)
    assert instance == mdev_uuid(vm.uuid) != mdev_uuid(make_vm(2, {}).uuid)
    types = "class/mdev_bus/0000:00:02.0/mdev_supported_types"
    assert sysfs.read(f"{types}/i915-GVTg_V5_4/create") == instance
    assert (gpu.mdev_type, gpu.sysfsdev) == (
        "i915-GVTg_V5_4",
        str(sysfs.root / "bus/mdev/devices" / instance),
    )
    assert json.loads(gpu_args(gpu_of(gpu))[1]) == {
        "driver": "vfio-pci",
        "sysfsdev": gpu.sysfsdev,
        "id": "gpu0",
    }
    made = sysfs.make_mdev(instance)
    await gpus.release(vm.id, gpu)
    assert (made / "remove").read_text() == "1"


async def test_vgpu_without_instances_lists_what_exists(sysfs: FakeSysfs) -> None:
    gpus = allocator(sysfs)
    with pytest.raises(DeviceUnavailable) as refused:
        await gpus.acquire(make_vm(1, {"type": "vgpu", "profile": "GVTg_V5_8"}))
    assert refused.value.details["types"] == [
        {"parent": "0000:00:02.0", "type": "i915-GVTg_V5_8", "name": "GVTg_V5_8",
         "description": "low_gm_size: 128MB", "device_api": "vfio-pci", "available_instances": 0}
    ]  # fmt: skip
    reason = gpus.unsupported(make_vm(1, {"type": "vgpu", "profile": "nvidia-63"}).gpu)
    assert reason is not None and "i915-GVTg_V5_4 (GVTg_V5_4)" in reason


# -- through the API and real QEMU ---------------------------------------------------------


@pytest.fixture
def settings(data_dir: Path, compile_cache: Path, sysfs: FakeSysfs) -> Settings:
    return make_settings(data_dir, compile_cache, sysfs_root=sysfs.root)


async def test_host_devices_endpoint(client: Any) -> None:
    response = await client.get("/api/v1/host/devices")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["iommu_enabled"] and body["vfio_pci_loaded"]
    by_address = {d["address"]: d for d in body["devices"]}
    gpu = by_address[GPU]
    assert (gpu["vendor_id"], gpu["device_id"], gpu["class_id"]) == ("10de", "1eb8", "030000")
    assert (gpu["class_name"], gpu["kind"], gpu["driver"]) == (
        "VGA compatible controller",
        "gpu",
        "nouveau",
    )
    assert gpu["iommu_group"] == "1"
    assert gpu["iommu_group_members"] == [BRIDGE, GPU, AUDIO]
    assert gpu["passthrough"] == {"possible": True, "reason": None}
    assert by_address["0000:00:02.0"]["passthrough"]["possible"] is False
    assert by_address[BRIDGE]["kind"] == "bridge"
    assert [(t["type"], t["available_instances"]) for t in body["mdev_types"]] == [
        ("i915-GVTg_V5_4", 2),
        ("i915-GVTg_V5_8", 0),
    ]


async def test_a_gpu_vm_binds_passes_and_releases(
    client: Any, services: Services, sysfs: FakeSysfs
) -> None:
    """QEMU here cannot open the fake device, so the VM ends in error: the release path."""
    ids = []
    for name in ("gpu-a", "gpu-b"):
        body = {"name": name, "image": "tiny", "memory_mb": 512, "disk_gb": 1,
                "network": {"type": "none"}, "gpu": {"enabled": True, "device": GPU}}  # fmt: skip
        response = await client.post("/api/v1/vms", json={**body, "wait": True})
        assert response.status_code == 201, await response.get_json()
        ids.append((await response.get_json())["id"])

    answers: dict[str, tuple[int, Any]] = {}

    async def start(vm_id: str) -> None:
        response = await client.post(f"/api/v1/vms/{vm_id}/start", json={})
        answers[vm_id] = (response.status_code, await response.get_json())

    async with trio.open_nursery() as nursery:
        for vm_id in ids:
            nursery.start_soon(start, vm_id)
    statuses = sorted(
        (status, body.get("error", {}).get("code", body.get("state")))
        for status, body in answers.values()
    )
    assert statuses == [(202, "starting"), (409, "DEVICE_IN_USE")], answers
    started = next(vm_id for vm_id, (status, _) in answers.items() if status == 202)

    waited = await client.get(f"/api/v1/vms/{started}/wait?state=error&timeout=60")
    vm = await waited.get_json()
    assert waited.status_code == 200, vm
    assert GPU in vm["state_reason"]  # QEMU was given the device and could not open it
    assert vm["gpu_assignment"] is None
    assert sysfs.override(GPU) == "\n" and sysfs.override(AUDIO) == "\n"
    assert sysfs.read("bus/pci/drivers_probe") == AUDIO
    listed = await (await client.get("/api/v1/host/devices")).get_json()
    assert all(d["in_use_by"] is None for d in listed["devices"])


async def test_gpu_refused_at_create_names_the_reason(client: Any) -> None:
    body = {"name": "igpu", "image": "tiny", "gpu": {"enabled": True, "device": "0000:00:02.0"}}
    response = await client.post("/api/v1/vms", json=body)
    error = (await response.get_json())["error"]
    assert (response.status_code, error["code"]) == (409, "CAPABILITY_UNAVAILABLE")
    assert "ISA bridge" in error["details"]["unsupported"]["gpu"]

    body = {"name": "nic", "image": "tiny", "gpu": {"enabled": True, "device": NIC}}
    response = await client.post("/api/v1/vms", json=body)
    error = (await response.get_json())["error"]
    assert (response.status_code, error["code"]) == (409, "CAPABILITY_UNAVAILABLE")
    assert "not a display device" in error["details"]["unsupported"]["gpu"]


async def test_this_host_lists_its_devices_and_why_none_can_be_passed() -> None:
    listed = await GpuAllocator(Path("/sys"), list, 10).devices()
    if listed.iommu_enabled:
        pytest.skip("this host has an IOMMU")
    assert listed.devices, "no PCI device read from /sys"
    for device in listed.devices:
        assert not device.passthrough.possible and device.passthrough.reason, device


async def test_a_nodes_description_lists_the_gpus_it_has_free(services: Services) -> None:
    """What placement reads of a node (cluster/nodes.py) from the manager on this sysfs:
    the passable GPU (and its audio function) while free, neither once a VM holds the GPU
    (as a start does, without QEMU)."""
    manager = services.manager
    here = await describe(manager, name="n1", url="http://n1:8080")
    assert [(d.address, d.kind) for d in here.free_devices] == [(GPU, "gpu"), (AUDIO, "audio")]
    assert [(t.type, t.available_instances) for t in here.vgpu_types] == [
        ("i915-GVTg_V5_4", 2), ("i915-GVTg_V5_8", 0)
    ]  # fmt: skip
    assert "bios" in here.firmware
    spec = CreateVmRequest.model_validate(  # a request's gpu.device alone means enabled
        {"name": "holder", "image": "tiny", "memory_mb": 512, "disk_gb": 1,
         "network": {"type": "none"}, "gpu": {"device": GPU}}
    )  # fmt: skip
    vm = await manager.wait_for((await manager.create(spec)).vm.id, {VmState.STOPPED}, 60)
    paths = manager._paths(vm.id)
    held = await manager._resources.acquire(vm, False, paths)
    holding = vm.model_copy(update=held.fields)
    try:
        assert (await describe(manager, name="n1", url="http://n1:8080")).free_devices == []
    finally:
        await manager._resources.release(holding, paths)
    again = await describe(manager, name="n1", url="http://n1:8080")
    assert [d.address for d in again.free_devices] == [GPU, AUDIO]
