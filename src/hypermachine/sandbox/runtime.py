"""Run Rhai scripts in the bundled ``rhai.wasm`` interpreter inside Wasmtime.

Every :meth:`RhaiRuntime.run` gets a fresh Store and instance. The module has no
WASI capabilities: the few ``wasi_snapshot_preview1`` functions that Rust's std
imports are linked to stubs that return ``ENOSYS`` (or trap, for ``proc_exit``).
Everything the script can reach goes through the ``hm`` imports defined here.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import math
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime

from ..models.scripts import ScriptLimits

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

WASM_PATH = Path(__file__).with_name("rhai.wasm")

#: Values above these are refused even when a caller asks for them.
HARD_LIMITS: dict[str, int] = ScriptLimits.hard_maxima()

_ENOSYS = 52
_TICK_MS = 5
_MAX_WASM_STACK = 2 * 1024 * 1024
_CONFIG_TAG = f"epoch;stack={_MAX_WASM_STACK};opt=speed"


Limits = ScriptLimits  # the resource limits of one run (hypermachine.models.ScriptLimits)
_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class HostObject:
    """A global object the script can use: ``vm.state``, ``vm.start()``."""

    type_name: str
    properties: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()


class HostCallError(Exception):
    """Raised by a host callback; becomes a catchable Rhai runtime error."""


HostCall = Callable[[dict[str, Any]], object]


@dataclass(frozen=True)
class ScriptResult:
    result: object
    result_type: str
    output: list[str]
    operations: int
    duration_ms: float


class ScriptFailure(Exception):
    """A script did not complete: ``kind`` is "syntax", "runtime" or "limit"."""

    def __init__(
        self,
        kind: str,
        message: str,
        line: int | None = None,
        column: int | None = None,
        output: list[str] | None = None,
        limit: str | None = None,
    ) -> None:
        self.kind = kind
        self.message = message
        self.line = line
        self.column = column
        self.output: list[str] = list(output or [])
        self.limit = limit
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" (line {self.line}, position {self.column})" if self.line else ""
        return f"{self.kind} error: {self.message}{where}"


class _Abort(Exception):
    """Raised inside a host import to stop the guest with a given failure."""

    def __init__(self, failure: ScriptFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass
class _RunState:
    limits: Limits
    deadline: float
    host_call: HostCall | None
    objects: Mapping[str, HostObject]
    functions: frozenset[str]
    on_output: Callable[[str], None] | None
    cancel: threading.Event
    output: list[str] = field(default_factory=list)
    pending: bytes = b""
    abort: ScriptFailure | None = None

    def fail(self, kind: str, message: str, limit: str | None = None) -> _Abort:
        self.abort = ScriptFailure(kind, message, None, None, self.output, limit)
        return _Abort(self.abort)


def _timeout_failure(state: _RunState) -> ScriptFailure:
    return ScriptFailure(
        "limit",
        f"Script timed out (limit timeout_ms = {state.limits.timeout_ms})",
        None,
        None,
        state.output,
        "timeout_ms",
    )


class _Ticker:
    """One daemon thread per engine advancing the epoch for timeouts."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = weakref.ref(engine)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rhai-epoch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(_TICK_MS / 1000):
            engine = self._engine()
            if engine is None:
                return
            engine.increment_epoch()
            del engine

    def stop(self) -> None:
        self._stop.set()


class RhaiRuntime:
    """Compiles ``rhai.wasm`` once; ``run`` may be called from several threads."""

    def __init__(self, cache_dir: Path | None = None, *, wasm_path: Path | None = None) -> None:
        self._wasm_path = wasm_path or WASM_PATH
        wasm = self._wasm_path.read_bytes()
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.max_wasm_stack = _MAX_WASM_STACK
        config.cranelift_opt_level = "speed"
        self._engine = wasmtime.Engine(config)
        self._module = self._load_module(wasm, Path(cache_dir) if cache_dir else None)
        self._imports = [(i.module, i.name or "", i.type) for i in self._module.imports]
        self._ticker = _Ticker(self._engine)
        self._cancel = threading.Event()
        weakref.finalize(self, self._ticker.stop)

    # ---------------------------------------------------------------- module cache
    def _load_module(self, wasm: bytes, cache_dir: Path | None) -> wasmtime.Module:
        if cache_dir is None:
            return wasmtime.Module(self._engine, wasm)
        version = importlib.metadata.version("wasmtime")
        key = hashlib.sha256(wasm + _CONFIG_TAG.encode()).hexdigest()[:24]
        path = cache_dir / f"rhai-{key}-wasmtime-{version}.cwasm"
        if path.exists():
            with contextlib.suppress(Exception):
                return wasmtime.Module.deserialize(self._engine, path.read_bytes())
        module = wasmtime.Module(self._engine, wasm)
        with contextlib.suppress(OSError):
            cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(module.serialize())
            os.replace(tmp, path)
        return module

    @property
    def imports(self) -> list[tuple[str, str]]:
        """(module, name) of every import of rhai.wasm."""
        return [(m, n) for m, n, _ in self._imports]

    def close(self) -> None:
        """Stop the epoch ticker and wake any sleeping script (it then times out)."""
        self._cancel.set()
        self._ticker.stop()

    # ---------------------------------------------------------------- linking
    def _define_wasi_stubs(self, linker: wasmtime.Linker, store: wasmtime.Store) -> None:
        """Link every non-``hm`` import to a stub that reaches nothing.

        ``environ_sizes_get`` reports an empty environment (wasi-libc's start-up code
        exits if it fails) and ``environ_get`` copies nothing; ``proc_exit`` traps;
        every other function returns ``ENOSYS`` without touching anything.
        """
        for module, name, ty in self._imports:
            if module == "hm":
                continue
            assert isinstance(ty, wasmtime.FuncType)
            linker.define(store, module, name, self._wasi_stub(store, name, ty))

    @staticmethod
    def _wasi_stub(store: wasmtime.Store, name: str, ty: wasmtime.FuncType) -> wasmtime.Func:
        results = list(ty.results)
        if name == "environ_sizes_get":

            def empty_env(caller: wasmtime.Caller, count_ptr: int, size_ptr: int) -> int:
                mem = caller.get("memory")
                if not isinstance(mem, wasmtime.Memory):
                    return _ENOSYS
                mem.write(caller, b"\0\0\0\0", count_ptr)
                mem.write(caller, b"\0\0\0\0", size_ptr)
                return 0

            return wasmtime.Func(store, ty, empty_env, access_caller=True)
        if name == "environ_get":
            return wasmtime.Func(store, ty, lambda *_a: 0)

        def stub(*_args: Any) -> Any:
            if name == "proc_exit":
                raise wasmtime.Trap(f"{name} is not available in the sandbox")
            return _ENOSYS if results else None

        return wasmtime.Func(store, ty, stub)

    def _link(self, store: wasmtime.Store, state: _RunState) -> wasmtime.Linker:
        linker = wasmtime.Linker(self._engine)
        self._define_wasi_stubs(linker, store)
        i32, f64 = wasmtime.ValType.i32(), wasmtime.ValType.f64()

        def memory(caller: wasmtime.Caller) -> wasmtime.Memory:
            mem = caller.get("memory")
            assert isinstance(mem, wasmtime.Memory)
            return mem

        def emit(caller: wasmtime.Caller, kind: int, ptr: int, length: int) -> None:
            text = bytes(memory(caller).read(caller, ptr, ptr + length)).decode("utf-8", "replace")
            state.output.append(text)
            if state.on_output is not None:
                state.on_output(text)

        def clock_ms() -> float:
            return time.monotonic() * 1000.0

        def host_call(caller: wasmtime.Caller, ptr: int, length: int) -> int:
            raw = bytes(memory(caller).read(caller, ptr, ptr + length))
            state.pending = self._dispatch(state, json.loads(raw)).encode()
            return len(state.pending)

        def host_response(caller: wasmtime.Caller, ptr: int) -> None:
            memory(caller).write(caller, state.pending, ptr)
            state.pending = b""

        def oom(size: int) -> None:
            raise state.fail(
                "limit",
                f"Out of memory allocating {size} bytes "
                f"(limit memory_bytes = {state.limits.memory_bytes})",
                "memory_bytes",
            )

        ft = wasmtime.FuncType
        linker.define_func("hm", "emit", ft([i32, i32, i32], []), emit, access_caller=True)
        linker.define_func("hm", "clock_ms", ft([], [f64]), clock_ms)
        linker.define_func("hm", "host_call", ft([i32, i32], [i32]), host_call, access_caller=True)
        linker.define_func("hm", "host_response", ft([i32], []), host_response, access_caller=True)
        linker.define_func("hm", "oom", ft([i32], []), oom)
        return linker

    def _dispatch(self, state: _RunState, request: dict[str, Any]) -> str:
        if request.get("function") == "sleep" and "sleep" in state.functions:
            self._sleep(state, request.get("args", []))
            return '{"ok":null}'
        if state.host_call is None:
            return json.dumps({"error": "no host handler is available for this call"})
        try:
            value = state.host_call(request)
        except HostCallError as e:
            return json.dumps({"error": str(e) or type(e).__name__})
        if time.monotonic() > state.deadline:
            raise state.fail("limit", _timeout_failure(state).message, "timeout_ms")
        try:
            return json.dumps({"ok": value}, allow_nan=False)
        except (TypeError, ValueError) as e:
            return json.dumps({"error": f"host returned a value that is not JSON: {e}"})

    def _sleep(self, state: _RunState, args: list[Any]) -> None:
        if len(args) != 1 or not isinstance(args[0], int | float) or isinstance(args[0], bool):
            raise state.fail("runtime", "sleep(ms) expects one number of milliseconds")
        ms = float(args[0])
        if not math.isfinite(ms) or ms < 0:
            raise state.fail("runtime", f"sleep: invalid duration {args[0]!r}")
        remaining = state.deadline - time.monotonic()
        if ms / 1000.0 > remaining:
            state.cancel.wait(max(remaining, 0.0))
            raise state.fail("limit", _timeout_failure(state).message, "timeout_ms")
        if state.cancel.wait(ms / 1000.0):
            raise state.fail("limit", "Script cancelled", "timeout_ms")

    # ---------------------------------------------------------------- running
    def run(
        self,
        code: str,
        *,
        args: dict[str, Any] | None = None,
        limits: Limits = _DEFAULT_LIMITS,
        objects: Mapping[str, HostObject] | None = None,
        functions: Collection[str] = (),
        host_call: HostCall | None = None,
        on_output: Callable[[str], None] | None = None,
    ) -> ScriptResult:
        """Run one script; raises :class:`ScriptFailure` on any failure."""
        if self._cancel.is_set():
            raise RuntimeError("RhaiRuntime is closed")
        objects = dict(objects or {})
        started = time.monotonic()
        state = _RunState(
            limits=limits,
            deadline=started + limits.timeout_ms / 1000.0,
            host_call=host_call,
            objects=objects,
            functions=frozenset(functions) | {"sleep"},
            on_output=on_output,
            cancel=self._cancel,
        )
        request = json.dumps(
            {
                "code": code,
                "args": args or {},
                "limits": limits.to_wasm(),
                "objects": {
                    name: {
                        "type": o.type_name,
                        "properties": list(o.properties),
                        "methods": list(o.methods),
                    }
                    for name, o in objects.items()
                },
                "functions": sorted(state.functions),
            }
        ).encode()
        store = wasmtime.Store(self._engine)
        store.set_limits(memory_size=limits.memory_bytes)
        store.set_epoch_deadline(max(1, math.ceil(limits.timeout_ms / _TICK_MS)) + 1)
        try:
            linker = self._link(store, state)
            instance = linker.instantiate(store, self._module)
            exports = instance.exports(store)
            mem = exports["memory"]
            alloc = exports["hm_alloc"]
            run = exports["hm_run"]
            assert isinstance(mem, wasmtime.Memory)
            assert isinstance(alloc, wasmtime.Func) and isinstance(run, wasmtime.Func)
            ptr = alloc(store, len(request))
            if not ptr:
                raise state.fail("limit", "Out of memory for the request", "memory_bytes")
            mem.write(store, request, ptr)
            packed = run(store, ptr, len(request))
            assert isinstance(packed, int)
            packed &= (1 << 64) - 1
            out_ptr, out_len = packed >> 32, packed & 0xFFFFFFFF
            response = json.loads(bytes(mem.read(store, out_ptr, out_ptr + out_len)))
        except _Abort as e:
            raise e.failure from None
        except wasmtime.Trap as e:
            raise self._trap_failure(state, e) from None
        except wasmtime.WasmtimeError as e:
            if state.abort is not None:
                raise state.abort from None
            if "memory" in str(e).lower() or "limit" in str(e).lower():
                raise ScriptFailure(
                    "limit",
                    f"Not enough memory to start the script "
                    f"(limit memory_bytes = {limits.memory_bytes})",
                    output=state.output,
                    limit="memory_bytes",
                ) from None
            raise
        finally:
            store.close()
        duration = (time.monotonic() - started) * 1000.0
        if not response.get("ok"):
            raise ScriptFailure(
                response.get("kind", "runtime"),
                response.get("message", "unknown error"),
                response.get("line"),
                response.get("column"),
                state.output,
                response.get("limit"),
            )
        return ScriptResult(
            result=response.get("result"),
            result_type=response.get("type", "()"),
            output=state.output,
            operations=int(response.get("operations", 0)),
            duration_ms=duration,
        )

    def _trap_failure(self, state: _RunState, trap: wasmtime.Trap) -> ScriptFailure:
        if state.abort is not None:
            return state.abort
        code = trap.trap_code
        if code == wasmtime.TrapCode.INTERRUPT:
            return _timeout_failure(state)
        if code in (wasmtime.TrapCode.STACK_OVERFLOW, wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS):
            return ScriptFailure(
                "limit",
                "Stack overflow in the interpreter: calls, blocks or values nested too deeply "
                f"(limit max_call_depth = {state.limits.max_call_depth})",
                output=state.output,
                limit="max_call_depth",
            )
        return ScriptFailure(
            "runtime",
            f"Internal interpreter failure: {trap.message}",
            output=state.output,
        )
