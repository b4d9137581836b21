"""What every model shares: the strict base class, names and labels, a VM's state."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

__all__ = ["NAME_PATTERN", "NODE_PATTERN", "VmState"]


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
NODE_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")


_MAX_LABELS = 64


_MAX_LABEL_VALUE = 256


class VmState(StrEnum):
    CREATING = "creating"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    ERROR = "error"
    DELETING = "deleting"
    SNAPSHOTTING = "snapshotting"
    RESTORING = "restoring"
    HIBERNATED = "hibernated"
    UNKNOWN = "unknown"  # only shown, never stored: the VM's node is down (a cluster)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        if not _LABEL_KEY.match(key):
            raise ValueError(f"label key {key!r} must match {_LABEL_KEY.pattern}")
        if len(value) > _MAX_LABEL_VALUE or any(ord(c) < 32 for c in value):
            raise ValueError(f"label {key!r}: value too long or has control characters")
    return labels
