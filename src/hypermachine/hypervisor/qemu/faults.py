"""Containing faults: an unexpected error in one VM's task stays inside that VM.

Every task that belongs to one VM runs under :func:`contained`: in the manager,
its provisioning, launch and supervision; in its :class:`~.machine.Machine`, the
QMP session, stop tasks and the companions (guest agent, console rotation). An
``Exception`` (or a group of them) raised by the task is logged with its
traceback and handed to the part's fault handler, which marks what broke — the
VM ``error`` (its QEMU is ended), or its guest agent unavailable — each with the
reason. It goes no further: the manager's nursery, the server and the other VMs
never see it. Cancellation is a ``BaseException`` and passes untouched (``except*``
lets it through even inside a group).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

__all__ = ["FaultHandler", "contained", "fault_reason"]

log = logging.getLogger(__name__)

# Called with the reason once the part has failed; may be sync or async.
FaultHandler = Callable[[str], Awaitable[None] | None]
_REASON_MAX = 500


def fault_reason(part: str, group: BaseExceptionGroup[Exception]) -> str:
    """One line naming the failing part and its first error."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return f"internal error in {part}: {type(first).__name__}: {first}"[:_REASON_MAX]


async def contained(
    vm_id: str, part: str, run: Callable[[], Awaitable[None]], on_fault: FaultHandler
) -> None:
    """Run ``run``; if it raises, log it and call ``on_fault(reason)`` instead of raising.

    A failing ``on_fault`` is logged too: nothing but cancellation leaves this call.
    """
    try:
        await run()
    except* Exception as group:
        reason = fault_reason(part, group)
        log.error("%s: %s", vm_id, reason, exc_info=group)
        try:
            outcome = on_fault(reason)
            if outcome is not None:
                await outcome
        except Exception:
            log.exception("%s: handling the fault in %s failed too", vm_id, part)
