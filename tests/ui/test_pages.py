"""The web console's routes: the app's page at every view, its files, nothing else."""

from __future__ import annotations

from typing import Any

import pytest

from hypermachine.ui import STATIC


@pytest.mark.parametrize("path", ["/ui", "/ui/vms/vm-123", "/ui/host", "/ui/sign-in"])
async def test_every_view_gets_the_app(client: Any, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.content_type.startswith("text/html")
    assert b'<script type="module" src="/ui/static/app.js">' in await response.get_data()
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]


async def test_browsers_go_from_the_root_to_the_console(client: Any) -> None:
    response = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert response.status_code == 302 and response.headers["Location"] == "/ui"
    response = await client.get("/")
    assert response.status_code == 200 and (await response.get_json())["ui"] == "/ui"


async def test_files_and_vendored_files_are_served(client: Any) -> None:
    response = await client.get("/ui/static/app.js")
    assert response.status_code == 200 and response.content_type.startswith("text/javascript")
    rfb = "/ui/static/vendor/@novnc/novnc/core/rfb.js"
    response = await client.get(rfb)
    assert response.status_code == 200
    assert await response.get_data() == (STATIC / rfb.removeprefix("/ui/static/")).read_bytes()


@pytest.mark.parametrize(
    "asset",
    ["../__init__.py", "vendor/../../__init__.py", "%2e%2e/__init__.py", "nothing.js", "app.py"],
)
async def test_nothing_outside_the_static_folder(client: Any, asset: str) -> None:
    response = await client.get(f"/ui/static/{asset}")
    assert response.status_code in (400, 404), asset
