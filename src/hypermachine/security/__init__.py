"""Who may call the server and how much: API keys, tenants, rate limits, quotas,
host admission and the audit log (threat model: docs/threat-model.md).

May import: ``config``, ``errors``, ``models``, ``store`` (its SQLite opener),
``operations`` (to declare the key and audit operations), ``cluster.forwarding``
(the signature check of a request another node forwarded).
"""

from .caller import ANONYMOUS, SYSTEM, Caller, Tier, acting_as, current_caller
from .db import SecurityStore
from .service import AuthMode, Security

__all__ = [
    "ANONYMOUS",
    "SYSTEM",
    "AuthMode",
    "Caller",
    "Security",
    "SecurityStore",
    "Tier",
    "acting_as",
    "current_caller",
]
