"""The VM state table."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from hypermachine.errors import InvalidState
from hypermachine.models import VmState
from hypermachine.states import Action, allowed_from, transition

S = VmState


@pytest.mark.parametrize(
    ("state", "action", "target"),
    [
        (S.STOPPED, Action.START, S.STARTING),
        (S.ERROR, Action.START, S.STARTING),
        (S.RUNNING, Action.STOP, S.STOPPING),
        (S.PAUSED, Action.STOP, S.STOPPING),
        (S.STOPPING, Action.STOP, S.STOPPING),
        (S.RUNNING, Action.PAUSE, S.PAUSED),
        (S.PAUSED, Action.RESUME, S.RUNNING),
        (S.RUNNING, Action.REBOOT, S.RUNNING),
        (S.STOPPED, Action.DELETE, S.DELETING),
        (S.RUNNING, Action.FORCE_DELETE, S.DELETING),
        (S.RUNNING, Action.SNAPSHOT, S.SNAPSHOTTING),
        (S.STOPPED, Action.SNAPSHOT, S.SNAPSHOTTING),
        (S.PAUSED, Action.HIBERNATE, S.SNAPSHOTTING),
        (S.HIBERNATED, Action.START, S.STARTING),
        (S.HIBERNATED, Action.RESTORE, S.RESTORING),
        (S.HIBERNATED, Action.DELETE, S.DELETING),
    ],
)
def test_allowed(state: VmState, action: Action, target: VmState) -> None:
    assert transition(state, action) is target


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (S.RUNNING, Action.START),
        (S.STOPPED, Action.STOP),
        (S.STOPPED, Action.PAUSE),
        (S.PAUSED, Action.PAUSE),
        (S.RUNNING, Action.RESUME),
        (S.PAUSED, Action.REBOOT),
        (S.RUNNING, Action.DELETE),
        (S.DELETING, Action.FORCE_DELETE),
        (S.CREATING, Action.START),
        (S.SNAPSHOTTING, Action.SNAPSHOT),
        (S.STOPPED, Action.HIBERNATE),
        (S.RESTORING, Action.RESTORE),
        (S.HIBERNATED, Action.PAUSE),
    ],
)
def test_refused_with_current_and_allowed(state: VmState, action: Action) -> None:
    with pytest.raises(InvalidState) as caught:
        transition(state, action)
    assert caught.value.details["current"] == state.value
    assert caught.value.details["allowed"] == sorted(s.value for s in allowed_from(action))
    assert caught.value.status == 409


class Lifecycle(RuleBasedStateMachine):
    """Random client actions against a model of what QEMU would then report."""

    def __init__(self) -> None:
        super().__init__()
        self.state = S.STOPPED

    @rule(action=st.sampled_from(list(Action)))
    def act(self, action: Action) -> None:
        before = self.state
        try:
            target = transition(before, action)
        except InvalidState:
            assert before not in allowed_from(action)
            return
        assert before in allowed_from(action)
        # What the manager does next once QEMU confirms (a hibernated VM resumes running;
        # a snapshot leaves the VM as it was, a hibernation hibernated, a restore running):
        settle = {S.STARTING: S.RUNNING, S.STOPPING: S.STOPPED, S.DELETING: S.STOPPED,
                  S.RESTORING: S.RUNNING}  # fmt: skip
        after = {Action.SNAPSHOT: before, Action.HIBERNATE: S.HIBERNATED}
        self.state = after.get(action, settle.get(target, target))
        if before is S.HIBERNATED and action is Action.STOP:
            self.state = S.STOPPED  # its saved RAM is discarded: no QEMU to stop

    @invariant()
    def never_transient(self) -> None:
        assert self.state in (S.STOPPED, S.RUNNING, S.PAUSED, S.HIBERNATED)


TestLifecycle = Lifecycle.TestCase
