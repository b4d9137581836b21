"""The REST API without booting guests: validation, errors, listing, idempotency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hostile import HOSTILE_BODIES, RAW_BODIES
from hypermachine.api import Services
from support import qemu_pids_for


def assert_error(body: Any, code: str) -> None:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def create(client: Any, name: str, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "image": "tiny", "memory_mb": 512, "disk_gb": 1, **fields}
    response = await client.post("/api/v1/vms", json=body)
    assert response.status_code == 201, await response.get_data()
    return dict(await response.get_json())


def nothing_changed(services: Services) -> None:
    assert services.manager.list()[0] == []
    vms_dir = services.settings.vms_dir
    assert not vms_dir.exists() or list(vms_dir.iterdir()) == []


async def test_health(client: Any) -> None:
    response = await client.get("/health")
    body = await response.get_json()
    assert response.status_code == 200
    assert body["status"] == "healthy"
    assert body["version"] == "0.1.0"
    assert body["uptime_seconds"] >= 0
    assert body["accelerator"] in ("kvm", "tcg")
    if Path("/sys/module/kvm_pvm").exists():
        assert body["accelerator"] == "tcg"
        assert "kvm_pvm" in body["accelerator_reason"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [row[1:] for row in HOSTILE_BODIES],
    ids=[row[0] for row in HOSTILE_BODIES],
)
async def test_hostile_create_changes_nothing(
    client: Any, services: Services, body: Any, status: int, code: str
) -> None:
    response = await client.post("/api/v1/vms", json=body)
    assert response.status_code == status, await response.get_data()
    assert_error(await response.get_json(), code)
    nothing_changed(services)


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code"),
    [row[1:] for row in RAW_BODIES],
    ids=[row[0] for row in RAW_BODIES],
)
async def test_hostile_raw_bodies(
    client: Any, services: Services, raw: bytes, content_type: str, status: int, code: str
) -> None:
    response = await client.post("/api/v1/vms", data=raw, headers={"Content-Type": content_type})
    assert response.status_code == status, await response.get_data()
    assert_error(await response.get_json(), code)
    nothing_changed(services)


async def test_unknown_image_lists_available(client: Any) -> None:
    response = await client.post("/api/v1/vms", json={"name": "a", "image": "nope"})
    body = await response.get_json()
    assert "tiny" in body["error"]["details"]["available"]


async def test_unsupported_names_every_reason(client: Any) -> None:
    response = await client.post(
        "/api/v1/vms",
        json={"name": "a", "image": "tiny", "gpu": {"enabled": True},
              "network": {"type": "bridge"}, "security": {"memory_encryption": "sev"}},
    )  # fmt: skip
    details = (await response.get_json())["error"]["details"]["unsupported"]
    assert set(details) == {"gpu", "security.memory_encryption", "network.type"}


async def test_create_defaults_and_get(client: Any) -> None:
    vm = await create(client, "defaults")
    got = await (await client.get(f"/api/v1/vms/{vm['id']}")).get_json()
    assert got["cpus"] == 1
    network = got["network"]
    assert network.pop("mac").startswith("52:54:00:")  # derived from the VM, stable
    assert network == {"type": "nat", "ip": None, "bridge": None, "ports": []}
    assert got["network_info"]["ip"] == "10.0.2.15/24"
    assert got["security"] == {
        "secure_boot": False,
        "vtpm": False,
        "memory_encryption": "none",
        "policy": None,
    }
    assert got["firmware"] == "bios"  # the image's default
    assert got["security_notes"] == []
    assert got["labels"] == {}


async def test_duplicate_name_conflicts(client: Any, services: Services) -> None:
    await create(client, "twin")
    response = await client.post("/api/v1/vms", json={"name": "twin", "image": "tiny"})
    assert response.status_code == 409
    assert_error(await response.get_json(), "NAME_TAKEN")
    assert len(services.manager.list()[0]) == 1


async def test_unknown_vm_and_route(client: Any) -> None:
    for path in ("/api/v1/vms/vm-000000000000", "/api/v1/vms/..%2F..%2Fetc"):
        response = await client.get(path)
        assert response.status_code == 404
    assert_error(await (await client.get("/api/v1/vms/vm-nope")).get_json(), "VM_NOT_FOUND")
    response = await client.post("/api/v1/vms/vm-000000000000/start")
    assert_error(await response.get_json(), "VM_NOT_FOUND")
    response = await client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert_error(await response.get_json(), "NOT_FOUND")
    response = await client.put("/api/v1/vms")
    assert response.status_code == 405
    assert_error(await response.get_json(), "METHOD_NOT_ALLOWED")


async def test_lifecycle_bodies_are_strict(client: Any) -> None:
    vm = await create(client, "strict", wait=True)
    response = await client.post(f"/api/v1/vms/{vm['id']}/stop", json={"forse": True})
    assert response.status_code == 400
    assert_error(await response.get_json(), "VALIDATION_ERROR")
    response = await client.post(f"/api/v1/vms/{vm['id']}/stop", json={})
    assert response.status_code == 409  # stopped: a real state error, not a parse error
    assert_error(await response.get_json(), "INVALID_STATE")


async def test_wait_validation_and_timeout(client: Any) -> None:
    vm = await create(client, "waiter", wait=True)
    bad = await client.get(f"/api/v1/vms/{vm['id']}/wait?state=flying")
    assert_error(await bad.get_json(), "VALIDATION_ERROR")
    bad = await client.get(f"/api/v1/vms/{vm['id']}/wait?state=running&timeout=-1")
    assert_error(await bad.get_json(), "VALIDATION_ERROR")
    slow = await client.get(f"/api/v1/vms/{vm['id']}/wait?state=running&timeout=0.2")
    assert slow.status_code == 409
    body = await slow.get_json()
    assert_error(body, "WAIT_TIMEOUT")
    assert body["error"]["details"]["current"] == "stopped"


async def test_list_filter_and_paginate(client: Any) -> None:
    for i in range(5):
        await create(client, f"web-{i}", labels={"tier": "web" if i < 3 else "db"}, wait=True)
    all_vms = await (await client.get("/api/v1/vms")).get_json()
    assert [vm["name"] for vm in all_vms["vms"]] == [f"web-{i}" for i in range(5)]
    assert all_vms["next_cursor"] is None

    seen, cursor = [], None
    while True:
        url = "/api/v1/vms?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url)).get_json()
        seen += [vm["name"] for vm in page["vms"]]
        assert len(page["vms"]) <= 2
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"web-{i}" for i in range(5)]

    db = await (await client.get("/api/v1/vms?label=tier=db")).get_json()
    assert [vm["name"] for vm in db["vms"]] == ["web-3", "web-4"]
    named = await (await client.get("/api/v1/vms?name=web-2")).get_json()
    assert [vm["name"] for vm in named["vms"]] == ["web-2"]
    stopped = await (await client.get("/api/v1/vms?state=stopped,running")).get_json()
    assert len(stopped["vms"]) == 5
    running = await (await client.get("/api/v1/vms?state=running")).get_json()
    assert running["vms"] == []

    for bad in ("limit=0", "limit=501", "limit=x", "cursor=garbage!", "state=up", "label=novalue"):
        response = await client.get(f"/api/v1/vms?{bad}")
        assert response.status_code == 400, bad
        assert (await response.get_json())["error"]["code"] in ("VALIDATION_ERROR", "BAD_REQUEST")


async def test_idempotency_key_replays_first_answer(client: Any, services: Services) -> None:
    headers = {"Idempotency-Key": "agent-retry-7"}
    body = {"name": "once", "image": "tiny", "disk_gb": 1}
    first = await client.post("/api/v1/vms", json=body, headers=headers)
    second = await client.post("/api/v1/vms", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert (await first.get_json())["id"] == (await second.get_json())["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(services.manager.list()[0]) == 1

    other = await client.post("/api/v1/vms", json={**body, "cpus": 2}, headers=headers)
    assert other.status_code == 409
    assert_error(await other.get_json(), "IDEMPOTENCY_CONFLICT")
    assert len(services.manager.list()[0]) == 1


async def test_disk_smaller_than_image_is_refused(client: Any, services: Services) -> None:
    response = await client.post(
        "/api/v1/vms", json={"name": "small", "image": "tiny", "disk_gb": 1, "wait": True}
    )
    # The tiny base disk is far below 1 GiB, so this one is fine ...
    assert response.status_code == 201
    assert (await response.get_json())["state"] == "stopped"
    disk = services.settings.vms_dir / (await response.get_json())["id"] / "disk.qcow2"
    assert disk.exists()


async def test_images_listing(client: Any) -> None:
    body = await (await client.get("/api/v1/images")).get_json()
    names = {image["name"]: image for image in body["images"]}
    assert names["tiny"]["available"] is True
    assert "ubuntu-22.04" in names
    assert all("/" not in str(image.get("path", "")) for image in body["images"])


async def test_no_qemu_for_created_vms(client: Any, services: Services) -> None:
    vm = await create(client, "idle", wait=True)
    assert vm["state"] == "stopped"
    assert qemu_pids_for({vm["uuid"]}) == []
