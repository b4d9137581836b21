"""A download progress bar (size, rate, time left) for ``hypermachine image pull``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..images import ProgressFn

__all__ = ["download_progress"]


@contextmanager
def download_progress(name: str, console: Console | None = None) -> Iterator[ProgressFn]:
    """A ``fn(done, total)`` for ``Catalogue.pull`` that draws the bar on stderr."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console or Console(stderr=True)) as progress:
        task = progress.add_task(name, total=None)

        def update(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        yield update
