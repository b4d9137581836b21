"""A Rhai script run against a VM: the request (code, args, limits) and the answer."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from .base import _Strict

__all__ = ["ScriptRequest", "ScriptResponse"]


class ScriptRequest(_Strict):
    """A script to run in the sandbox, with ``vm`` bound to the VM of the URL."""

    language: str = Field(default="rhai", description='Only "rhai" (the default).')
    code: str = Field(max_length=1024 * 1024, description="The Rhai source.")
    args: dict[str, Any] | None = Field(
        default=None, description="A JSON object the script sees as the constant `args`."
    )
    limits: dict[str, int] | None = Field(
        default=None,
        description="Lower any limit: max_operations, max_call_depth, max_expr_depth, "
        "max_string_size, max_array_size, max_map_size, max_output_bytes, memory_bytes, "
        "timeout_ms.",
    )


class ScriptResponse(_Strict):
    result: Any = Field(description="JSON of the script's last value (() is null).")
    result_type: str = Field(description="Rhai's type_of name of the result.")
    output: list[str] = Field(description="Lines printed by print() and debug().")
    duration_ms: float
    operations: int
