"""Pydantic models of API keys and audit entries (the single source of their fields)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..models import NAME_PATTERN
from .caller import Tier

__all__ = ["AuditEntry", "AuditPage", "CreateKeyRequest", "CreatedKey", "KeyInfo", "KeyList"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateKeyRequest(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="What the key is for.")
    tier: Tier = Field(default="free", description="Rate limit and VM quota tier.")
    admin: bool = Field(default=False, description="Sees every tenant; manages keys.")
    tenant: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="The tenant its VMs belong to (default: the key's name).",
    )


class KeyInfo(_Strict):
    """A key as listed: never the key itself (only a hash of it is stored)."""

    id: str
    name: str
    tenant: str
    tier: Tier
    admin: bool
    prefix: str = Field(description="The first characters of the key, to recognise it.")
    created_at: datetime
    revoked_at: datetime | None = None


class CreatedKey(KeyInfo):
    key: str = Field(description="The secret, shown this once.")


class KeyList(_Strict):
    keys: list[KeyInfo]


class AuditEntry(_Strict):
    id: int
    time: datetime
    key_id: str | None = Field(description="null: the open embedded default or the CLI.")
    tenant: str
    operation: str
    target: str | None
    outcome: str = Field(description='"ok" or the error code.')
    node: str = Field(default="", description="The node that did it (its name).")
    details: dict[str, Any] = Field(
        default_factory=dict,
        description="What the call did (argv, a path and size, a script's hash); no secrets.",
    )


class AuditPage(_Strict):
    entries: list[AuditEntry]
    next_cursor: int | None = None
