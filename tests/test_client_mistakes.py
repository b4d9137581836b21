"""Every client mistake is a 4xx in the error format, never a 500 (app test client)."""

from __future__ import annotations

import base64
from typing import Any

import pytest


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


MISTAKES = [
    ("GET", "/api/v1/vms/vm-000000000000/console", {}, 400),  # plain GET on the websocket
    ("GET", "/api/v1/vms/vm-000000000000/console/log?tail=%C2%B2", {}, 400),  # ?tail=²
    ("GET", "/api/v1/vms/vm-000000000000/console/log?tail=-1", {}, 400),
    ("GET", "/api/v1/vms/vm-000000000000/console/log?tail=1&tail=2", {}, 400),
    ("GET", "/api/v1/events?after=%C2%B2", {}, 400),  # ?after=²
    ("GET", "/api/v1/events", {"Last-Event-ID": str(2**70)}, 400),
    ("GET", "/api/v1/events", {"Last-Event-ID": "999999999"}, 400),  # no such event yet
    ("GET", "/api/v1/events?after=nan", {}, 400),
    ("GET", "/api/v1/vms?limit=%C2%B2", {}, 400),
    ("GET", "/api/v1/vms?limit=0", {}, 400),
    ("GET", "/api/v1/vms?cursor=" + cursor_of("seq:" + "9" * 40), {}, 400),
    ("GET", "/api/v1/vms?cursor=" + cursor_of("seq:²"), {}, 400),
    ("GET", "/api/v1/vms?cursor=%FF", {}, 400),
    ("GET", "/api/v1/vms?" + "&".join(f"label=k{i}=v" for i in range(65)), {}, 400),
    ("GET", "/api/v1/vms?label=novalue", {}, 400),
    ("GET", "/api/v1/vms?state=runing", {}, 400),
    ("GET", "/api/v1/vms?colour=blue", {}, 400),
    ("GET", "/api/v1/vms/vm-000000000000/wait?state=running&timeout=nan", {}, 400),
    ("GET", "/api/v1/vms/vm-000000000000/wait?state=running&timeout=1e999", {}, 400),
    ("GET", "/api/v1/vms/vm-000000000000/wait", {}, 400),
    ("POST", "/api/v1/vms/vm-000000000000/exec?wait_agent=-5", {}, 400),
    ("GET", "/api/v1/host?refresh=maybe", {}, 400),
    ("GET", "/api/v1/vms/bad%21id", {}, 400),
    ("GET", "/api/v1/audit?cursor=%C2%B2", {}, 400),
    ("DELETE", "/api/v1/vms", {}, 405),
]


@pytest.mark.parametrize(("method", "path", "headers", "status"), MISTAKES)
async def test_a_mistake_is_a_4xx_in_the_error_format(
    client: Any, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    response = await client.open(path, method=method, headers=headers)
    assert response.status_code == status, (path, await response.get_data())
    body = await response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}


async def test_a_vm_creating_is_waited_for_by_exec_with_wait_agent(client: Any) -> None:
    """exec with wait_agent on a VM still creating/starting waits instead of a 409."""
    created = await client.post(
        "/api/v1/vms",
        json={"name": "soon", "image": "tiny", "memory_mb": 512, "disk_gb": 1, "start": True},
    )
    vm = await created.get_json()
    assert created.status_code == 201 and vm["state"] in ("creating", "starting", "running")
    response = await client.post(
        f"/api/v1/vms/{vm['id']}/exec?wait_agent=120", json={"command": ["echo", "ready"]}
    )
    result = await response.get_json()
    assert response.status_code == 200, result
    assert result["exit_code"] == 0 and result["stdout"] == "ready\n"


def test_hm_config_names_the_settings_file(tmp_path: Any) -> None:
    from hypermachine.config import load_settings

    path = tmp_path / "hm.toml"
    path.write_text("port = 9123\nstop_timeout_s = 7\n")
    settings = load_settings(environ={"HM_CONFIG": str(path), "HM_SERVER": "http://x"})
    assert settings.port == 9123 and settings.stop_timeout_s == 7


def test_a_gpu_object_without_enabled_asks_for_a_gpu() -> None:
    from hypermachine.models import GpuSpec, VmSpec

    spec = VmSpec.model_validate({"name": "g", "image": "tiny", "gpu": {"type": "vgpu"}})
    assert spec.gpu.enabled and spec.gpu.type == "vgpu"
    assert not GpuSpec.model_validate({"enabled": False}).enabled
    assert not VmSpec.model_validate({"name": "g", "image": "tiny"}).gpu.enabled
