"""Fixtures for the sandbox tests: one RhaiRuntime per session, cached compile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hypermachine.sandbox import RhaiRuntime


@pytest.fixture(scope="session")
def runtime(request: pytest.FixtureRequest) -> Iterator[RhaiRuntime]:
    cache_dir = Path(request.config.cache.mkdir("rhai-wasm")) if request.config.cache else None
    rt = RhaiRuntime(cache_dir=cache_dir)
    yield rt
    rt.close()
