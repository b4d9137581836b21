"""Pieces of the command line that need no server: following a log, ages, the download
bar, shell completion."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from hypermachine.vmcli.guest import fresh_text
from hypermachine.vmcli.output import age, memory
from hypermachine.vmcli.progress import download_progress


def test_fresh_text_writes_only_what_the_log_gained() -> None:
    assert fresh_text([], ["a", "b"]) == "a\nb"
    assert fresh_text(["a", "b"], ["a", "b"]) == ""
    assert fresh_text(["a", "b"], ["a", "b", "c"]) == "\nc"
    assert fresh_text(["a", "hm# "], ["a", "hm# ls", "x"]) == "ls\nx"  # the last line grew
    assert fresh_text(["x", "p", "p"], ["p", "p", "p"]) == "\np"  # the window slid on
    assert fresh_text(["old"], ["new1", "new2"]) == "\nnew1\nnew2"  # nothing in common


def test_age_and_memory_read_like_kubectl() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert [age(now - timedelta(seconds=s), now) for s in (5, 300, 7200, 3 * 86400)] == [
        "5s", "5m", "2h", "3d",
    ]  # fmt: skip
    assert (memory(512), memory(2048)) == ("512 MiB", "2 GiB")


def test_download_progress_shows_size_rate_and_eta() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with download_progress("debian-12", console) as update:
        update(0, 8 << 20)
        update(4 << 20, 8 << 20)
        update(8 << 20, 8 << 20)
    drawn = screen.getvalue()
    assert "debian-12" in drawn and "8.0/8.0 MiB" in drawn
    assert "/s" in drawn and "ETA" in drawn


def test_completion_scripts_and_answers(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "hypermachine.cli"]
    for shell in ("bash", "zsh"):
        script = subprocess.run([*cli, "completion", shell], capture_output=True, text=True)
        assert script.returncode == 0 and "hypermachine" in script.stdout
    answers = tmp_path / "answers"
    line = "hypermachine vm e"
    env = {
        **os.environ, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n", "COMP_LINE": line,
        "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(answers),
    }  # fmt: skip
    subprocess.run([*cli], env=env, capture_output=True, timeout=60)
    assert set(answers.read_text().split()) == {"exec", "events"}
