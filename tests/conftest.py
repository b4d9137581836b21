"""Shared fixtures: real settings in a temp dir, real services, real QEMU.

Every test that starts QEMU leaves nothing behind: the ``services`` fixture
force-deletes every VM at teardown and then checks that no QEMU process carrying
one of the test's VM UUIDs survives.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trio

import background
from etcdcluster import EtcdCluster, etcd_available
from hypermachine.api import Services, create_app
from hypermachine.config import Settings
from hypermachine.server import open_services
from realserver import Server, free_port
from support import REPO, TINY_DIR, make_settings, qemu_pids_for, remove_all_vms, require_tiny


@pytest.fixture
def tiny() -> Path:
    require_tiny()
    return TINY_DIR


EFI_DIR = REPO / "images" / "tiny-efi"


@pytest.fixture
def efi_image(tiny: Path) -> Path:
    """images/tiny-efi (tools/build-efi-image): the tiny guest behind shim + GRUB on OVMF."""
    if not (EFI_DIR / "esp-unsigned.qcow2").exists():
        message = "images/tiny-efi is not built: run tools/build-efi-image (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return EFI_DIR


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Wasmtime compile cache for the session, so each server start deserializes."""
    return tmp_path_factory.mktemp("compile-cache")


@pytest.fixture
def settings(request: pytest.FixtureRequest, data_dir: Path, compile_cache: Path) -> Settings:
    """Test settings; ``@pytest.mark.hm_settings(name=value)`` overrides some."""
    marker = request.node.get_closest_marker("hm_settings")
    return make_settings(data_dir, compile_cache, **(marker.kwargs if marker else {}))


@pytest.fixture
async def services(settings: Settings, tiny: Path) -> AsyncIterator[Services]:
    async with open_services(settings) as svc:
        try:
            yield svc
        finally:
            with trio.CancelScope(shield=True), trio.fail_after(30):
                uuids = await remove_all_vms(svc)
    assert qemu_pids_for(uuids) == [], "a QEMU process outlived its test"


@pytest.fixture
def client(services: Services):  # type: ignore[no-untyped-def]
    return create_app(services).test_client()


@pytest.fixture
def server(data_dir: Path, tiny: Path) -> Iterator[Server]:
    """A real ``hypermachine serve`` process; its VMs are force-deleted afterwards."""
    srv = Server(data_dir, free_port())
    srv.start()
    yield srv
    try:
        if srv.proc is None or srv.proc.poll() is not None:
            srv.start()
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            for vm in client.get("/api/v1/vms").json()["vms"]:
                client.delete(f"/api/v1/vms/{vm['id']}?force=true")
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A real 3-member etcd cluster on loopback, started once for the session by the
    first test that asks for it (docs/cluster.md)."""
    if not etcd_available():
        message = "etcd is not installed: run tools/setup (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the checks of background tests now when other tests run beside them (not
    in a pytest-xdist worker: it collects every test but runs only its share, and the
    other worker runs beside it anyway)."""
    if len(session.items) < 2 or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for item in session.items:
        marker = item.get_closest_marker("background")
        if marker is not None:
            background.start(item.nodeid, marker.args[0])


def pytest_sessionfinish(session: pytest.Session) -> None:
    background.wait_all(timeout_s=300)
