"""Checks that take long but little CPU, run in a thread (and a Trio loop) of their own.

A test marked ``@pytest.mark.background.with_args(check)`` has its ``check`` started as soon as
the suite is collected, when other tests run beside it (conftest), so its waiting
overlaps theirs; the test itself only waits for the check's outcome. Run alone, or in
a pytest-xdist worker (``make test``: the other worker runs beside it), the test starts
the check and waits for it.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable

import trio

Check = Callable[[], Awaitable[None]]


class Background(threading.Thread):
    def __init__(self, name: str, check: Check) -> None:
        super().__init__(name=f"background {name}", daemon=True)
        self._check = check
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            trio.run(self._check)
        except BaseException as err:
            self.error = err


_running: dict[str, Background] = {}


def start(name: str, check: Check) -> None:
    if name not in _running:
        _running[name] = Background(name, check)
        _running[name].start()


def outcome(name: str, check: Check, timeout_s: float) -> None:
    """Wait for ``check`` (started now if it was not) and raise what it raised."""
    start(name, check)
    job = _running[name]
    job.join(timeout_s)
    assert not job.is_alive(), f"{name} did not end within {timeout_s:g} s"
    if job.error is not None:
        raise job.error


def wait_all(timeout_s: float) -> None:
    """Let every started check finish (each cleans up after itself)."""
    for job in _running.values():
        job.join(timeout_s)
