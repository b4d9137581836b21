"""A host binary is asked once per version of its file (hypervisor.platform.binaries)."""

from __future__ import annotations

import os
from pathlib import Path

from hypermachine.hypervisor.platform import binaries


def counting_binary(path: Path, *, status: int = 0) -> Path:
    """A script that appends to ``<path>.runs`` each time it runs."""
    path.write_text(f'#!/bin/sh\necho run >> "{path}.runs"\necho "answer $1"\nexit {status}\n')
    path.chmod(0o755)
    return path


def runs(path: Path) -> int:
    log = Path(f"{path}.runs")
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_second_ask_is_answered_without_running_it(tmp_path: Path) -> None:
    tool = counting_binary(tmp_path / "tool")
    assert binaries.output_of([str(tool), "a"], timeout_s=5) == (0, "answer a\n")
    assert binaries.output_of([str(tool), "a"], timeout_s=5) == (0, "answer a\n")
    assert runs(tool) == 1
    assert binaries.output_of([str(tool), "b"], timeout_s=5) == (0, "answer b\n")
    assert runs(tool) == 2


def test_a_replaced_binary_is_asked_again(tmp_path: Path) -> None:
    tool = counting_binary(tmp_path / "tool")
    binaries.output_of([str(tool)], timeout_s=5)
    replacement = counting_binary(tmp_path / "tool.new")
    os.replace(replacement, tool)
    binaries.output_of([str(tool)], timeout_s=5)
    assert runs(tool) == 1 and runs(replacement) == 1


def test_a_failure_is_not_kept(tmp_path: Path) -> None:
    tool = counting_binary(tmp_path / "tool", status=3)
    assert binaries.output_of([str(tool)], timeout_s=5) == (3, "answer \n")
    assert binaries.output_of([str(tool)], timeout_s=5) == (3, "answer \n")
    assert runs(tool) == 2
