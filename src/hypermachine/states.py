"""The VM state machine: which client action is allowed in which state.

    creating -> stopped -> starting -> running <-> paused
                   ^                      |          |
                   +----- stopping <------+----------+
    any -> error (with a reason); stopped/error -> deleting

    running/paused/stopped -> snapshotting -> (as before) | hibernated
    hibernated/stopped/running/paused/error -> restoring -> running | paused | stopped
    hibernated -> start: restoring (the saved RAM is resumed); stop: stopped (discarded)

``transition`` is pure: it names the state an action moves a VM into, or raises
:class:`~hypermachine.errors.InvalidState` with the current state and the states
the action is allowed from.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import InvalidState
from .models import VmState

__all__ = ["LIVE_STATES", "STARTED", "START_FAILED", "Action", "allowed_from", "transition"]

S = VmState


class Action(StrEnum):
    START = "start"
    STOP = "stop"
    PAUSE = "pause"
    RESUME = "resume"
    REBOOT = "reboot"
    DELETE = "delete"
    FORCE_DELETE = "force_delete"
    SNAPSHOT = "snapshot"
    RESTORE = "restore"
    HIBERNATE = "hibernate"
    MIGRATE = "migrate"


# States in which a QEMU process may exist.
LIVE_STATES = frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING, S.SNAPSHOTTING, S.RESTORING})
# Where a start (a boot, a resume of saved RAM) leaves a VM when it succeeded (a guest
# saved paused comes back paused), and, besides error, when it failed.
STARTED = frozenset({S.RUNNING, S.PAUSED})
START_FAILED = frozenset({S.STOPPED, S.HIBERNATED})

_TABLE: dict[Action, tuple[frozenset[VmState], VmState]] = {
    Action.START: (frozenset({S.STOPPED, S.ERROR, S.HIBERNATED}), S.STARTING),
    Action.STOP: (
        frozenset({S.STARTING, S.RUNNING, S.PAUSED, S.STOPPING, S.HIBERNATED}),
        S.STOPPING,
    ),
    Action.PAUSE: (frozenset({S.RUNNING}), S.PAUSED),
    Action.RESUME: (frozenset({S.PAUSED}), S.RUNNING),
    Action.REBOOT: (frozenset({S.RUNNING}), S.RUNNING),
    Action.DELETE: (frozenset({S.STOPPED, S.ERROR, S.CREATING, S.HIBERNATED}), S.DELETING),
    Action.FORCE_DELETE: (frozenset(set(VmState) - {S.DELETING}), S.DELETING),
    Action.SNAPSHOT: (frozenset({S.RUNNING, S.PAUSED, S.STOPPED}), S.SNAPSHOTTING),
    Action.RESTORE: (
        frozenset({S.RUNNING, S.PAUSED, S.STOPPED, S.ERROR, S.HIBERNATED}),
        S.RESTORING,
    ),
    Action.HIBERNATE: (frozenset({S.RUNNING, S.PAUSED}), S.SNAPSHOTTING),
    # The VM stays as it is while it moves (a paused one arrives paused).
    Action.MIGRATE: (frozenset({S.RUNNING, S.PAUSED}), S.RUNNING),
}


def allowed_from(action: Action) -> frozenset[VmState]:
    return _TABLE[action][0]


def check(current: VmState, action: Action) -> None:
    """Refuse ``action`` on a VM in ``current`` unless the table allows it.

    Raises:
        InvalidState: the action is not allowed in ``current``.
    """
    sources = _TABLE[action][0]
    if current not in sources:
        raise InvalidState(
            f"cannot {action.value.replace('_', ' ')} a VM that is {current.value}",
            current=current.value,
            allowed=sorted(s.value for s in sources),
        )


def transition(current: VmState, action: Action) -> VmState:
    """The state ``action`` moves a VM in ``current`` into.

    Raises:
        InvalidState: the action is not allowed in ``current``.
    """
    check(current, action)
    return _TABLE[action][1]
