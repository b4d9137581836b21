"""Snapshots, restore, fork, templates and hibernation (docs/snapshots.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from .base import NAME_PATTERN, VmState, _check_labels, _Strict
from .spec import Labels, NetworkSpec, SnapshotRef
from .vm import Vm

__all__ = [
    "CreateFromSnapshotRequest",
    "ForkRequest",
    "ForkResult",
    "RestoreRequest",
    "Snapshot",
    "SnapshotList",
    "SnapshotRequest",
]


class SnapshotRequest(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Unique among the VM's snapshots.")
    memory: bool = Field(
        default=False,
        description="Also save RAM and device state (a running or paused VM only; a stopped "
        "VM gets a disk-only snapshot).",
    )
    standby: bool = Field(
        default=True,
        description="A memory snapshot: keep a restore of it ready (a paused QEMU holding "
        "its RAM, which costs the VM's memory once more while it waits), so restoring it "
        "is a switch-over. Made when the host's memory budget has room.",
    )
    wait: bool = Field(default=True, description="false: answer 202 at once.")
    timeout_s: float | None = Field(default=None, gt=0, le=3600)


class Snapshot(_Strict):
    """A complete snapshot (one still being written is never listed)."""

    name: str
    vm_id: str
    created_at: datetime
    memory: bool = Field(description="RAM and device state are saved (restore resumes them).")
    size_bytes: int = Field(
        description="Bytes on disk the snapshot holds: memory, VARS, TPM and its disk layer."
    )
    vm_state: VmState = Field(description="The VM's state when it was taken.")
    standby: bool = Field(default=False, description="A restore of it is to be kept ready.")
    ready: bool = Field(
        default=False,
        description="A restore of it is ready now: a paused QEMU holds its RAM, so "
        "restoring it is a switch-over, not a launch.",
    )
    complete: bool = True


class SnapshotList(_Strict):
    snapshots: list[Snapshot]


class RestoreRequest(_Strict):
    wait: bool = Field(default=True, description="Return once the VM is back.")
    timeout_s: float | None = Field(default=None, gt=0, le=3600)


class ForkRequest(_Strict):
    """New VMs resuming from the parent's memory state, each on its own disk overlay."""

    name: str = Field(
        pattern=NAME_PATTERN, description="The child's name (count > 1: NAME-1, NAME-2, ...)."
    )
    snapshot: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="The parent's memory snapshot to fork from; omitted: an instant one.",
    )
    count: int = Field(default=1, ge=1, le=16)
    wait: bool = Field(default=False, description="Return once every child runs.")
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    ports: Literal["remap", "refuse"] = Field(
        default="remap",
        description="The parent's forwarded host ports: give each child free ones (remap, "
        "reported in network_info.forwards) or refuse the fork.",
    )
    ips: list[str] | None = Field(
        default=None,
        max_length=16,
        description="New static addresses, one per child (needed when the parent has one).",
    )

    @field_validator("ips")
    @classmethod
    def _valid_ips(cls, ips: list[str] | None) -> list[str] | None:
        for ip in ips or []:
            NetworkSpec._valid_ip(ip)
        return ips


class CreateFromSnapshotRequest(_Strict):
    """``POST /api/v1/vms`` with ``from_snapshot``: a fork kept as a spec (a template)."""

    name: str = Field(pattern=NAME_PATTERN)
    from_snapshot: SnapshotRef
    start: bool = Field(default=False, description="Resume it right away.")
    wait: bool = False
    labels: Labels = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return _check_labels(labels)


class ForkResult(_Strict):
    vms: list[Vm]
