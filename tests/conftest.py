"""Shared fixtures: real settings in a temp dir, real services, real QEMU.

Every test that starts QEMU leaves nothing behind: the ``services`` fixture
force-deletes every VM at teardown and then checks that no QEMU process carrying
one of the test's VM UUIDs survives.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from hypermachine.api import Services, create_app
from hypermachine.config import Settings
from hypermachine.server import open_services
from support import TINY_DIR, make_settings, qemu_pids_for, remove_all_vms


def require_tiny() -> None:
    if (TINY_DIR / "image.json").exists():
        return
    message = "the tiny image is not built: run tools/build-tiny-image (make test does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def tiny() -> Path:
    require_tiny()
    return TINY_DIR


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
def settings(data_dir: Path, compile_cache: Path) -> Settings:
    return make_settings(data_dir, compile_cache)


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
