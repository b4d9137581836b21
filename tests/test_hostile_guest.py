"""Hostile guests on real QEMU: what one guest sends stays inside that guest's VM.

The tiny image's ``hm.hostile=STREAM`` runs ``/bin/hm-hostile`` instead of qemu-ga
(tools/build-tiny-image): it answers the agent handshake, then answers commands
with one hostile stream; ``hm.hostile=console`` floods the serial console. One
normal VM lives through the whole test; one hostile VM per stream is booted in
turn. After each stream ``/health``, ``/metrics`` and exec in the normal VM
answer, and the hostile VM says what happened. The console VM finally gets a stop
task that raises, which must end only that VM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hypermachine.api import Services
from hypermachine.config import Settings
from hypermachine.models import EventType
from support import REPO, make_settings, tiny_kernel_image, wait_until

pytestmark = pytest.mark.qemu

MAX_LINE = 1024 * 1024
CONSOLE_MAX = 64 * 1024
BOOT_S = 120
# stream -> what the hostile VM's agent must report (its last_error) after an exec.
AGENT_STREAMS = {
    "nested": "nested deeper than",
    "nonobject": "invalid reply to guest-exec-status",
    "badbase64": "invalid base64",
    "endless": f"a line longer than {MAX_LINE} bytes",
    "random": "the guest agent sent a",
}
STREAMS = [*AGENT_STREAMS, "console"]


@pytest.fixture
def settings(data_dir: Path, compile_cache: Path) -> Settings:
    catalogue = data_dir.parent / "catalogue.toml"
    images = [tiny_kernel_image("tiny")] + [
        tiny_kernel_image(f"tiny-hostile-{s}", f"hm.hostile={s}") for s in STREAMS
    ]
    catalogue.write_text("".join(images))
    return make_settings(
        data_dir,
        compile_cache,
        catalogue_file=catalogue,
        builtin_images_dir=REPO / "images",
        guest_agent_max_line_bytes=MAX_LINE,
        guest_agent_command_timeout_s=30.0,
        guest_agent_ping_interval_s=2.0,
        console_log_max_bytes=CONSOLE_MAX,
        console_log_check_s=0.5,
    )


async def _boot(client: Any, name: str, image: str) -> str:
    body = {"name": name, "image": image, "memory_mb": 512, "disk_gb": 1, "start": True}
    response = await client.post("/api/v1/vms", json=body)
    assert response.status_code == 201, await response.get_data()
    vm_id = str((await response.get_json())["id"])
    response = await client.get(f"/api/v1/vms/{vm_id}/wait?state=running&timeout={BOOT_S}")
    assert response.status_code == 200, await response.get_json()
    return vm_id


async def _exec(client: Any, vm_id: str, *argv: str) -> tuple[int, dict[str, Any]]:
    response = await client.post(
        f"/api/v1/vms/{vm_id}/exec?wait_agent={BOOT_S}", json={"command": list(argv)}
    )
    return response.status_code, dict(await response.get_json())


async def _vm(client: Any, vm_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/vms/{vm_id}")
    assert response.status_code == 200
    return dict(await response.get_json())


async def _normal_vm_still_served(client: Any, normal: str, after: str) -> None:
    status, got = await _exec(client, normal, "echo", after)
    assert (status, got.get("stdout")) == (200, f"{after}\n"), (after, got)
    response = await client.get("/health")
    assert response.status_code == 200, f"/health after {after}"
    response = await client.get("/metrics")
    assert response.status_code == 200, f"/metrics after {after}"
    text = (await response.get_data()).decode()
    assert f'hypermachine_vm_guest_agent_connected{{vm_id="{normal}"}} 1.0' in text, after
    assert f'hypermachine_vm_memory_rss_bytes{{vm_id="{normal}"}}' in text, after


async def _attack_agent(client: Any, services: Services, vm_id: str, stream: str) -> None:
    """Exec in the hostile VM: its agent's garbage must come back as an agent error."""
    agent = await services.manager.guest.agent(vm_id, wait_s=BOOT_S)
    # the stand-in, not qemu-ga (its version is asked a moment after the sync)
    await wait_until(lambda: agent.info.version == "hm-hostile", timeout=10, what="its version")
    status, got = await _exec(client, vm_id, "true")
    why = AGENT_STREAMS[stream]
    if status == 200:  # guest-exec was answered; guest-exec-status was the garbage
        assert got["status"] == "failed" and why in got["error"], (stream, got)
    else:
        assert got["error"]["code"] == "GUEST_AGENT_UNAVAILABLE", (stream, got)
        assert why in got["error"]["message"], (stream, got)
    vm = await _vm(client, vm_id)
    assert vm["state"] == "running", (stream, vm)
    assert why in (vm["guest_agent"]["last_error"] or ""), (stream, vm["guest_agent"])


async def _flood_console(client: Any, services: Services, vm_id: str) -> None:
    """A console flood is capped by rotation; the VM and its real agent carry on."""
    log = services.settings.vms_dir / vm_id / "console.log"
    await wait_until(
        lambda: log.with_name("console.log.1").exists(), timeout=BOOT_S, what="a rotation"
    )
    response = await client.get(f"/api/v1/vms/{vm_id}/console/log?tail=5")
    assert response.status_code == 200
    status, got = await _exec(client, vm_id, "echo", "still here")
    assert (status, got.get("stdout")) == (200, "still here\n"), got
    assert log.stat().st_size < 100 * CONSOLE_MAX  # bounded (QEMU appends between checks)


async def _break_a_stop_task(client: Any, services: Services, vm_id: str) -> None:
    """A VM task that raises (a stop with a negative timeout, which once ended the
    server) is contained: that VM ends in error with the reason, nothing else."""
    await services.manager.stop(vm_id, timeout_s=-1)
    response = await client.get(f"/api/v1/vms/{vm_id}/wait?state=error&timeout={BOOT_S}")
    vm = await response.get_json()
    assert response.status_code == 200, vm
    assert vm["state_reason"].startswith("internal error in stopping the VM: ValueError"), vm


async def test_hostile_guests_stay_inside_their_vm(client: Any, services: Services) -> None:
    normal = await _boot(client, "normal", "tiny")
    await _normal_vm_still_served(client, normal, "boot")
    for stream in STREAMS:
        hostile = await _boot(client, f"hostile-{stream}", f"tiny-hostile-{stream}")
        if stream == "console":
            await _flood_console(client, services, hostile)
            await _break_a_stop_task(client, services, hostile)
        else:
            await _attack_agent(client, services, hostile, stream)
        await _normal_vm_still_served(client, normal, stream)
        response = await client.delete(f"/api/v1/vms/{hostile}?force=true")
        assert response.status_code in (200, 202, 204), await response.get_data()
    # The seam handled every stream: the one task that had to be contained is the stop.
    faults = [e for e in services.manager.events.after(0) if e.type is EventType.VM_FAULT]
    assert [e.data["part"] for e in faults] == ["stopping the VM"], faults
