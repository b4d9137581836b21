"""What the request handlers need, built once by the server and handed to the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio
from quart import current_app

from ..config import Settings
from ..hypervisor.manager import Manager
from ..sandbox.hostapi import ScriptService

__all__ = ["Services", "services"]


@dataclass
class Services:
    settings: Settings
    manager: Manager
    catalogue: Any  # hypermachine.images.Catalogue
    scripts: ScriptService
    security: Any = None  # hypermachine.security.Security; None: no auth layer (open)
    started_at: float = field(default_factory=trio.current_time)


def services() -> Services:
    found: Services = current_app.extensions["hypermachine"]
    return found
