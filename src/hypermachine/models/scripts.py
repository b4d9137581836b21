"""A Rhai script run against a VM: the request (code, args, limits) and the answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from .base import _Strict

__all__ = ["ScriptLimits", "ScriptRequest", "ScriptResponse"]

_MIB = 1024 * 1024


def _limit(default: int, hard: int, *, host: bool = False) -> Any:
    """A limit: its default (the ceiling of a request), the hard maximum nobody may
    raise it above, and who enforces it: the interpreter (sent in the wasm request)
    or the host (``host``: Wasmtime's memory limit, the epoch deadline)."""
    return Field(default=default, ge=1, le=hard, json_schema_extra={"enforced_by_host": host})


class ScriptLimits(BaseModel):
    """The resource limits of one script run: the one list of their names, defaults
    and hard maxima, read by the runtime, the request's schema and the wasm request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_operations: StrictInt = _limit(50_000_000, 1_000_000_000)
    max_call_depth: StrictInt = _limit(64, 256)
    max_expr_depth: StrictInt = _limit(64, 256)
    max_string_size: StrictInt = _limit(_MIB, 16 * _MIB)
    max_array_size: StrictInt = _limit(100_000, 10_000_000)
    max_map_size: StrictInt = _limit(100_000, 10_000_000)
    max_output_bytes: StrictInt = _limit(_MIB, 16 * _MIB)
    memory_bytes: StrictInt = _limit(256 * _MIB, 1024 * _MIB, host=True)
    timeout_ms: StrictInt = _limit(10_000, 600_000, host=True)

    @classmethod
    def hard_maxima(cls) -> dict[str, int]:
        """Values above these are refused even when a caller asks for them."""
        return {name: _bound(cls, name, "le") for name in cls.model_fields}

    def lowered(self, **overrides: int) -> ScriptLimits:
        """Return a copy with some limits lowered; raising a limit is refused.

        Raises:
            ValueError: an unknown limit, a value that is not an integer >= 1, or one
                above the current value.
        """
        for name, value in overrides.items():
            if name not in type(self).model_fields:
                raise ValueError(f"unknown limit {name!r}")
            current = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"limit {name} must be an integer >= 1, got {value!r}")
            if value > current:
                raise ValueError(f"limit {name}={value} is above the current value {current}")
        return self.model_copy(update=overrides)

    def to_wasm(self) -> dict[str, int]:
        """The limits the interpreter enforces itself, for its request."""
        return {
            name: getattr(self, name)
            for name, info in type(self).model_fields.items()
            if not _extra(info)["enforced_by_host"]
        }


def _extra(info: Any) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _bound(model: type[BaseModel], name: str, kind: str) -> int:
    for meta in model.model_fields[name].metadata:
        value = getattr(meta, kind, None)
        if isinstance(value, int):
            return value
    raise AssertionError(f"limit {name} has no {kind} bound")


class ScriptRequest(_Strict):
    """A script to run in the sandbox, with ``vm`` bound to the VM of the URL."""

    language: str = Field(default="rhai", description='Only "rhai" (the default).')
    code: str = Field(max_length=1024 * 1024, description="The Rhai source.")
    args: dict[str, Any] | None = Field(
        default=None, description="A JSON object the script sees as the constant `args`."
    )
    limits: dict[str, int] | None = Field(
        default=None,
        description="Lower any limit: " + ", ".join(ScriptLimits.model_fields) + ".",
    )


class ScriptResponse(_Strict):
    result: Any = Field(description="JSON of the script's last value (() is null).")
    result_type: str = Field(description="Rhai's type_of name of the result.")
    output: list[str] = Field(description="Lines printed by print() and debug().")
    duration_ms: float
    operations: int
