"""The committed rhai.wasm matches a fresh reproducible build (opt-in: ~40-100 s).

Run with ``HM_TEST_WASM_BUILD=1``; needs Debian's Rust with the wasm32 std.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "build-rhai-wasm"

pytestmark = pytest.mark.skipif(
    os.environ.get("HM_TEST_WASM_BUILD") != "1"
    or not Path("/usr/bin/cargo").exists()
    or not Path("/usr/bin/rustc").exists(),
    reason="set HM_TEST_WASM_BUILD=1 (needs /usr/bin/cargo and the wasm32 std)",
)


def test_committed_wasm_is_reproducible() -> None:
    proc = subprocess.run(
        [str(SCRIPT), "--check"], capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout
