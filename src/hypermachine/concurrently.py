"""Steps that run at once, failing as one step would.

A Trio nursery raises what its tasks raise inside an exception group, so a caller's
``except HMError`` would miss the error of a step run in one (it would surface as an
internal error instead of the step's own answer). :func:`run_all` runs the steps in
a nursery of its own and raises the first step's failure as itself; the other steps
are cancelled by then. Cancellation from outside passes as usual.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

__all__ = ["run_all"]


async def run_all(*steps: Callable[[], Awaitable[object]]) -> None:
    """Run ``steps`` at once until all are done; raises the first one's exception."""
    failures: list[Exception] = []
    async with trio.open_nursery() as nursery:

        async def run(step: Callable[[], Awaitable[object]]) -> None:
            try:
                await step()
            except Exception as err:  # the first ends the others; it is raised below
                failures.append(err)
                nursery.cancel_scope.cancel()

        for step in steps:
            nursery.start_soon(run, step)
    if failures:
        raise failures[0]
