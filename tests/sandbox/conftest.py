"""Fixtures for the sandbox tests: one RhaiRuntime per session, cached compile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hypermachine.sandbox import RhaiRuntime


@pytest.fixture(scope="session")
def runtime(request: pytest.FixtureRequest) -> Iterator[RhaiRuntime]:
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache_dir = Path(cache.mkdir("rhai-wasm")) if cache is not None else None
    rt = RhaiRuntime(cache_dir=cache_dir)
    yield rt
    rt.close()
