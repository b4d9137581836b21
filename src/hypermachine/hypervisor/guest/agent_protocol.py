"""What a guest agent may say, checked at one seam (pure: bytes and values in, values out).

Everything on the agent channel comes from the guest, so none of it is trusted.
A line is bounded in length (by the channel, see ``guest_agent.py``) and in JSON
nesting; it must be a reply envelope (an object with an optional integer ``id``
and either ``return`` or a well-formed ``error``); and each command's ``return``
is validated against its typed model below before any caller reads it. Anything
else raises :class:`AgentProtocolError`, which the agent client turns into "this
VM's agent is unavailable", with the reason. Nothing a guest writes can reach a
caller as a ``KeyError``, ``TypeError`` or ``binascii.Error``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)

__all__ = [
    "MAX_DEPTH",
    "AgentInfo",
    "AgentProtocolError",
    "Done",
    "ExecStarted",
    "ExecState",
    "FileChunk",
    "FilePosition",
    "Handle",
    "NetworkInterface",
    "Reply",
    "decode_reply",
    "returned",
]

# qemu-ga's deepest reply (guest-get-fsinfo) nests about 6 levels; 32 leaves room.
MAX_DEPTH = 32
_REASON_MAX = 300
T = TypeVar("T")


class AgentProtocolError(Exception):
    """The guest agent sent something that is not a well-formed reply."""


def _b64(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("base64 data must be a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"invalid base64 ({err})") from None


B64 = Annotated[bytes, BeforeValidator(_b64)]


class _Reply(BaseModel):
    # Foreign data: exact JSON types; newer qemu-ga fields are ignored, not refused.
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class _ErrorBody(_Reply):
    error_class: StrictStr = Field(default="", alias="class")
    desc: StrictStr = ""


class _Envelope(_Reply):
    id: StrictInt | None = None
    value: Any = Field(default=None, alias="return")
    error: _ErrorBody | None = None


class Done(_Reply):
    """A reply whose content we do not use; it must still be an object."""


class AgentInfo(_Reply):
    version: StrictStr | None = None


class ExecStarted(_Reply):
    pid: StrictInt


class ExecState(_Reply):
    """``guest-exec-status``."""

    exited: StrictBool
    exitcode: StrictInt | None = None
    signal: StrictInt | None = None
    out_data: B64 = Field(default=b"", alias="out-data")
    err_data: B64 = Field(default=b"", alias="err-data")
    out_truncated: StrictBool = Field(default=False, alias="out-truncated")
    err_truncated: StrictBool = Field(default=False, alias="err-truncated")


class FileChunk(_Reply):
    """``guest-file-read``."""

    count: StrictInt = Field(ge=0)
    data: B64 = Field(alias="buf-b64")
    eof: StrictBool


class FilePosition(_Reply):
    """``guest-file-seek``."""

    position: StrictInt = Field(ge=0)
    eof: StrictBool


class _Counters(_Reply):
    rx_bytes: StrictInt = Field(default=0, ge=0, alias="rx-bytes")
    tx_bytes: StrictInt = Field(default=0, ge=0, alias="tx-bytes")
    rx_packets: StrictInt = Field(default=0, ge=0, alias="rx-packets")
    tx_packets: StrictInt = Field(default=0, ge=0, alias="tx-packets")


class NetworkInterface(_Reply):
    """One entry of ``guest-network-get-interfaces``."""

    name: StrictStr = Field(max_length=256)
    statistics: _Counters | None = None


Handle = Annotated[int, Field(strict=True, ge=0)]  # ``guest-file-open``


@dataclass(frozen=True)
class Reply:
    """One decoded reply line: its ``id``, and its ``return`` value or its error."""

    id: int | None
    value: object
    error_class: str | None = None
    error_desc: str = ""


def _depth(value: object) -> int:
    """Nesting depth of a decoded JSON value (iterative: no recursion on guest data)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def decode_reply(line: bytes, *, max_depth: int = MAX_DEPTH) -> Reply:
    """Decode one line from the agent into a :class:`Reply`.

    Raises:
        AgentProtocolError: not UTF-8 JSON, nested deeper than ``max_depth``, not an
            object, or not shaped as a reply.
    """
    try:
        value = json.loads(line)
    except RecursionError:  # the C decoder's own limit; we refuse far earlier below
        raise AgentProtocolError(f"a reply nested deeper than {max_depth} levels") from None
    except ValueError as err:
        raise AgentProtocolError(f"a line that is not JSON ({err})") from None
    if not isinstance(value, dict):
        raise AgentProtocolError(f"a reply that is not a JSON object ({type(value).__name__})")
    if _depth(value) > max_depth:
        raise AgentProtocolError(f"a reply nested deeper than {max_depth} levels")
    try:
        envelope = _Envelope.model_validate(value)
    except ValidationError as err:
        raise AgentProtocolError(f"a malformed reply: {_summary(err)}") from None
    if envelope.error is not None:
        return Reply(envelope.id, None, envelope.error.error_class, envelope.error.desc)
    return Reply(envelope.id, envelope.value)


_ADAPTERS: dict[object, TypeAdapter[Any]] = {}  # a memo: building an adapter is costly


def returned(kind: type[T], value: object, command: str) -> T:
    """``value`` (a ``return``) as ``kind``, the typed answer of ``command``.

    Raises:
        AgentProtocolError: the value does not fit ``kind``.
    """
    try:
        adapter = _ADAPTERS.get(kind) or _ADAPTERS.setdefault(kind, TypeAdapter(kind))
        return adapter.validate_python(value, strict=True)  # type: ignore[no-any-return]
    except ValidationError as err:
        raise AgentProtocolError(f"an invalid reply to {command}: {_summary(err)}") from None


def _summary(err: ValidationError) -> str:
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or 'return'}: {e['msg']}" for e in err.errors()[:3]
    ]
    return "; ".join(parts)[:_REASON_MAX]
