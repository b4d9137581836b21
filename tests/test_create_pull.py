"""Creating a VM from a known image that is not on disk yet pulls it first."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hypermachine.config import Settings
from support import REPO, make_settings


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def settings(
    data_dir: Path, compile_cache: Path, http_root: tuple[Path, str], tiny: Path
) -> Settings:
    root, url = http_root
    disk = (tiny / "bootdisk.qcow2").read_bytes()
    (root / "cloud.qcow2").write_bytes(disk)
    good = hashlib.sha256(disk).hexdigest()
    catalogue = data_dir.parent / "catalogue.toml"
    catalogue.write_text(
        f"""
[[image]]
name = "cloudy"
boot = "disk"
format = "qcow2"
url = "{url}/cloud.qcow2"
sha256 = "{good}"

[[image]]
name = "tampered"
boot = "disk"
format = "qcow2"
url = "{url}/cloud.qcow2"
sha256 = "{"0" * 64}"

[[image]]
name = "unreachable"
boot = "disk"
format = "qcow2"
url = "http://127.0.0.1:9/nothing.qcow2"
sha256 = "{good}"
"""
    )
    return make_settings(
        data_dir,
        compile_cache,
        catalogue_file=catalogue,
        builtin_images_dir=REPO / "images",
    )


async def create_and_settle(client: Any, image: str, state: str) -> dict[str, Any]:
    body = {"name": f"from-{image}", "image": image, "disk_gb": 1}
    response = await client.post("/api/v1/vms", json=body)
    assert response.status_code == 201, await response.get_data()
    created = await response.get_json()
    assert created["state"] == "creating"
    settled = await client.get(f"/api/v1/vms/{created['id']}/wait?state={state}&timeout=60")
    assert settled.status_code == 200, await settled.get_data()
    return dict(await settled.get_json())


async def test_pull_while_creating(client: Any, settings: Settings) -> None:
    vm = await create_and_settle(client, "cloudy", "stopped")
    assert vm["state"] == "stopped"
    assert (settings.images_store_dir / "cloudy").is_dir()
    images = {
        i["name"]: i for i in (await (await client.get("/api/v1/images")).get_json())["images"]
    }
    assert images["cloudy"]["available"] is True


async def test_checksum_mismatch_is_an_error(client: Any, settings: Settings) -> None:
    vm = await create_and_settle(client, "tampered", "error")
    assert "tampered" in vm["state_reason"] and "could not be pulled" in vm["state_reason"]
    leftovers = list((settings.images_store_dir / "tampered").glob("*")) if (
        settings.images_store_dir / "tampered").exists() else []  # fmt: skip
    assert [p for p in leftovers if p.suffix in (".qcow2", ".raw")] == []


async def test_no_network_is_an_error(client: Any) -> None:
    vm = await create_and_settle(client, "unreachable", "error")
    assert "could not be pulled" in vm["state_reason"]
