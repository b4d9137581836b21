"""Sandboxed Rhai scripting: an interpreter compiled to wasm, run in Wasmtime.

``runtime`` runs one script in Wasmtime under its limits (``models.ScriptLimits``);
``hostapi`` binds ``vm`` to a VM and runs each host call as an operation.

May import: ``errors``, ``models``, ``operations``, ``hypervisor.manager`` (the
manager a script's VM lives in).
"""

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
