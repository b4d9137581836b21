"""Sandboxed Rhai scripting: an interpreter compiled to wasm, run in Wasmtime."""

from hypermachine.sandbox.runtime import (
    HARD_LIMITS,
    HostCall,
    HostCallError,
    HostObject,
    Limits,
    RhaiRuntime,
    ScriptFailure,
    ScriptResult,
)

__all__ = [
    "HARD_LIMITS",
    "HostCall",
    "HostCallError",
    "HostObject",
    "Limits",
    "RhaiRuntime",
    "ScriptFailure",
    "ScriptResult",
]
