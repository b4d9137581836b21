"""What the request handlers need, built once by the server and handed to the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio
from quart import current_app

from ..config import Settings
from ..hypervisor.manager import Manager
from ..sandbox.hostapi import ScriptService
from ..security.tokens import ConsoleTokens

__all__ = ["Services", "services"]


@dataclass
class Services:
    settings: Settings
    manager: Manager
    catalogue: Any  # hypermachine.images.Catalogue
    scripts: ScriptService
    security: Any = None  # hypermachine.security.Security; None: no auth layer (open)
    cluster: Any = None  # hypermachine.cluster.Membership; None: a single host
    forwarder: Any = None  # hypermachine.cluster.forwarding.Forwarder; None: no forwarding
    views: Any = None  # hypermachine.cluster.views.Views; None: a single host
    started_at: float = field(default_factory=trio.current_time)
    console_tokens: ConsoleTokens | None = None
    """Browser console tokens; built from the settings when not given."""

    def __post_init__(self) -> None:
        if self.console_tokens is None:
            self.console_tokens = ConsoleTokens(self.settings.console_token_ttl_s)


def services() -> Services:
    found: Services = current_app.extensions["hypermachine"]
    return found
