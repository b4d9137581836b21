"""What the guest does by itself becomes VM state: power-off, panic; disk boot works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hypermachine.api import Services
from hypermachine.config import Settings
from support import REPO, make_settings, tiny_kernel_image, wait_until

pytestmark = pytest.mark.qemu

CATALOGUE = (
    tiny_kernel_image("tiny-poweroff", "hm.poweroff")
    + tiny_kernel_image("tiny-panic", "hm.panic")
    + """
[[image]]
name = "tiny-bootdisk"
boot = "disk"
dir = "tiny"
disk = "bootdisk.qcow2"
"""
)


@pytest.fixture
def settings(data_dir: Path, compile_cache: Path) -> Settings:
    catalogue = data_dir.parent / "catalogue.toml"
    catalogue.write_text(CATALOGUE)
    return make_settings(
        data_dir,
        compile_cache,
        catalogue_file=catalogue,
        builtin_images_dir=REPO / "images",
    )


async def boot(client: Any, image: str) -> dict[str, Any]:
    body = {"name": image, "image": image, "memory_mb": 512, "disk_gb": 1, "start": True}
    response = await client.post("/api/v1/vms", json=body)
    assert response.status_code == 201, await response.get_data()
    return dict(await response.get_json())


async def wait_state(client: Any, vm_id: str, state: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/vms/{vm_id}/wait?state={state}&timeout=90")
    body = await response.get_json()
    assert response.status_code == 200, body
    return dict(body)


async def test_guest_poweroff_becomes_stopped(client: Any) -> None:
    vm = await boot(client, "tiny-poweroff")
    stopped = await wait_state(client, vm["id"], "stopped")
    assert stopped["state_reason"] == "the guest powered itself off"


async def test_guest_panic_becomes_error(client: Any, services: Services) -> None:
    vm = await boot(client, "tiny-panic")
    failed = await wait_state(client, vm["id"], "error")
    assert failed["state_reason"] == "the guest kernel panicked"
    kinds = [e.type.value for e in services.manager.events.after(0, vm_id=vm["id"])]
    assert kinds[-3:] == ["vm.guest_panicked", "vm.qemu_exited", "vm.state_changed"], kinds


async def test_bios_disk_boot_reaches_marker(client: Any, services: Services) -> None:
    vm = await boot(client, "tiny-bootdisk")
    await wait_state(client, vm["id"], "running")
    log = services.settings.vms_dir / vm["id"] / "console.log"
    await wait_until(
        lambda: log.exists() and b"HM-READY" in log.read_bytes(), timeout=90, what="marker"
    )
