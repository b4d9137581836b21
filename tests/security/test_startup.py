"""The auth mode of a real ``hypermachine serve`` and the ``key`` CLI against its store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hypermachine.config import ConfigError
from hypermachine.security import Security, SecurityStore
from realserver import Server, free_port
from support import make_settings


def hm(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HM_")}
    return subprocess.run(
        [sys.executable, "-m", "hypermachine.cli", *args, "--data-dir", str(data_dir)],
        env={**environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def test_non_loopback_without_keys_refuses_to_start(data_dir: Path) -> None:
    done = hm(data_dir, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    assert "refusing to serve 0.0.0.0 without authentication" in done.stderr


@pytest.mark.parametrize(
    ("host", "auth", "has_key", "outcome"),
    [
        ("127.0.0.1", "auto", False, "open"),
        ("::1", "auto", False, "open"),
        ("0.0.0.0", "auto", False, "refused"),
        ("0.0.0.0", "open", False, "open"),
        ("0.0.0.0", "auto", True, "keys"),
        ("127.0.0.1", "auto", True, "keys"),
        ("127.0.0.1", "keys", False, "keys"),
    ],
)
async def test_auth_mode_table(
    data_dir: Path, compile_cache: Path, host: str, auth: str, has_key: bool, outcome: str
) -> None:
    settings = make_settings(data_dir, compile_cache, host=host, auth=auth)
    security = Security(settings, SecurityStore(settings.database_file))
    try:
        if has_key:
            security.store.create_key(name="k", tier="free", admin=False)
        if outcome == "refused":
            with pytest.raises(ConfigError):
                await security.check_startup()
            return
        await security.check_startup()
        assert security.mode() == outcome
    finally:
        security.store.close()


def test_explicit_opt_out_serves_open(data_dir: Path, tiny: Path, servers: list[Server]) -> None:
    server = Server(data_dir, free_port())
    servers.append(server)
    server.start(("HM_HOST", "0.0.0.0"), ("HM_AUTH", "open"))
    health = httpx.get(f"{server.url}/health").json()
    assert health["auth"] == "open"
    assert "OPEN" in (data_dir / "server.log").read_text()


def test_key_cli_against_a_running_server(
    data_dir: Path, tiny: Path, servers: list[Server]
) -> None:
    created = hm(data_dir, "key", "create", "--name", "ci", "--tier", "pro")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("hm_") and len(key) >= 46 and "\n" not in key
    server = Server(data_dir, free_port())
    servers.append(server)
    server.start()
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/health").json()["auth"] == "keys"
        refused = client.get("/api/v1/vms")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "UNAUTHORIZED"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        ok = client.get("/api/v1/vms", headers={"X-API-Key": key})
        assert ok.status_code == 200 and ok.headers["RateLimit-Limit"] == "600"
        listed = hm(data_dir, "key", "list")
        assert "ci" in listed.stdout and key not in listed.stdout and key[:10] in listed.stdout
        key_id = listed.stdout.split()[0]
        revoked = hm(data_dir, "key", "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        after = client.get("/api/v1/vms", headers={"Authorization": f"Bearer {key}"})
        assert after.status_code == 401
