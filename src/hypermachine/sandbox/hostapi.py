"""Running a Rhai script against one VM: the host API a script sees, and the service.

A script runs on a Trio worker thread (the Wasmtime call releases the GIL, so the
API keeps answering); the number of concurrent scripts is bounded. Every host
call (``vm.start()``, ``vm.state`` …) hops back to Trio with
``trio.from_thread.run`` and goes through the same :class:`Manager` methods as the
REST API, so a script can do exactly what its caller could do over HTTP, bounded
by the script's own deadline. Host calls act as the caller who ran the script
(tenant isolation and audit hold inside scripts too).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from pydantic import ValidationError

from ..errors import (
    HMError,
    ScriptLimitExceeded,
    ScriptRuntimeError,
    ScriptSyntaxError,
    UnsupportedLanguage,
    ValidationFailed,
)
from ..hypervisor.manager import Manager
from ..models import (
    ExecRequest,
    FileReadRequest,
    FileWriteRequest,
    ScriptRequest,
    ScriptResponse,
    VmState,
)
from ..security.caller import Caller, acting_as, current_caller
from .runtime import HostCallError, HostObject, Limits, RhaiRuntime, ScriptFailure

__all__ = ["READ_ONLY_QMP", "VM_OBJECT", "ScriptService"]

VM_OBJECT = HostObject(
    type_name="VM",
    properties=("id", "name", "state"),
    methods=(
        "info",
        "start",
        "stop",
        "pause",
        "resume",
        "reboot",
        "wait_for",
        "metrics",
        "qmp",
        "exec",
        "read_file",
        "write_file",
    ),
)

# QMP commands a script may send: queries with no side effects that reveal no host
# paths (so not query-block or query-chardev). Nothing that writes host files or
# spawns processes (migrate, screendump, dump-guest-memory …) can ever be reached.
READ_ONLY_QMP = frozenset(
    {
        "query-status",
        "query-name",
        "query-uuid",
        "query-version",
        "query-kvm",
        "query-cpus-fast",
        "query-blockstats",
        "query-memory-size-summary",
        "query-commands",
        "query-events",
        "query-target",
        "query-machines",
        "query-hotpluggable-cpus",
        "query-balloon",
        "query-tpm",
    }
)

Handler = Callable[[list[Any]], Awaitable[object]]

# The longest a guest call in a script waits for qemu-ga to come up after a boot.
_AGENT_WAIT_S = 60.0


class _VmBinding:
    """The ``vm`` object of one script run, bound to one VM and one deadline."""

    def __init__(self, manager: Manager, vm_id: str, deadline: float, caller: Caller) -> None:
        self._manager = manager
        self._caller = caller  # host calls act with the permissions of the script's caller
        self._vm_id = vm_id
        self._deadline = deadline
        self._methods: dict[str, Handler] = {
            "info": self._info,
            "start": self._lifecycle(manager.start),
            "pause": self._lifecycle(manager.pause),
            "resume": self._lifecycle(manager.resume),
            "reboot": self._lifecycle(manager.reboot),
            "stop": self._stop,
            "wait_for": self._wait_for,
            "metrics": self._metrics,
            "qmp": self._qmp,
            "exec": self._exec,
            "read_file": self._read_file,
            "write_file": self._write_file,
        }

    async def dispatch(self, request: dict[str, Any]) -> object:
        with acting_as(self._caller):
            return await self._dispatch(request)

    async def _dispatch(self, request: dict[str, Any]) -> object:
        if request.get("object") != "vm":
            raise HostCallError(f"unknown host call {request!r}")
        if "property" in request:
            return self._property(str(request["property"]))
        method = self._methods.get(str(request.get("method")))
        if method is None:
            raise HostCallError(f"vm has no method {request.get('method')!r}")
        with trio.move_on_at(self._deadline):
            try:
                return await method(list(request.get("args") or []))
            except ValidationError as err:
                raise HostCallError(f"invalid arguments: {_first_problem(err)}") from err
        raise HostCallError("the script ran out of time during a host call")

    def _property(self, name: str) -> object:
        vm = self._manager.get(self._vm_id)
        if name not in VM_OBJECT.properties:
            raise HostCallError(f"vm has no property {name!r}")
        value = getattr(vm, name)
        return value.value if isinstance(value, VmState) else value

    async def _info(self, args: list[Any]) -> object:
        _arity("info", args, 0)
        return self._manager.get(self._vm_id).model_dump(mode="json")

    def _lifecycle(self, operation: Callable[[str], Awaitable[Any]]) -> Handler:
        async def call(args: list[Any]) -> object:
            _arity(operation.__name__, args, 0)
            vm = await operation(self._vm_id)
            return vm.state.value

        return call

    async def _stop(self, args: list[Any]) -> object:
        options = args[0] if args else {}
        if len(args) > 1 or not isinstance(options, dict) or set(options) - {"force", "timeout_s"}:
            raise HostCallError("stop takes an optional map #{force: bool, timeout_s: number}")
        vm = await self._manager.stop(
            self._vm_id,
            force=bool(options.get("force", False)),
            timeout_s=options.get("timeout_s"),
        )
        return vm.state.value

    async def _wait_for(self, args: list[Any]) -> object:
        if not 1 <= len(args) <= 2 or not isinstance(args[0], str):
            raise HostCallError('wait_for(state, timeout_ms) e.g. vm.wait_for("running", 30000)')
        try:
            state = VmState(args[0])
        except ValueError as err:
            raise HostCallError(f"unknown state {args[0]!r}") from err
        timeout_ms = args[1] if len(args) == 2 else 60_000
        if not isinstance(timeout_ms, int | float) or timeout_ms <= 0:
            raise HostCallError("wait_for: timeout_ms must be a positive number")
        remaining = max(0.001, self._deadline - trio.current_time())
        vm = await self._manager.wait_for(self._vm_id, {state}, min(timeout_ms / 1000, remaining))
        return vm.state.value

    async def _metrics(self, args: list[Any]) -> object:
        _arity("metrics", args, 0)
        return (await self._manager.metrics(self._vm_id)).model_dump(mode="json")

    async def _qmp(self, args: list[Any]) -> object:
        if not 1 <= len(args) <= 2 or not isinstance(args[0], str):
            raise HostCallError('qmp(command, args) e.g. vm.qmp("query-status", #{})')
        command, arguments = args[0], (args[1] if len(args) == 2 else None)
        if command not in READ_ONLY_QMP:
            raise HostCallError(
                f"QMP command {command!r} is not allowed in scripts; allowed: "
                + ", ".join(sorted(READ_ONLY_QMP))
            )
        if arguments is not None and not isinstance(arguments, dict):
            raise HostCallError("qmp arguments must be a map")
        return await self._manager.qmp(self._vm_id, command, arguments or None)

    async def _exec(self, args: list[Any]) -> object:
        """``vm.exec(["uname", "-a"])`` or ``vm.exec("echo hi | wc -c")`` (run by /bin/sh)."""
        if len(args) != 1 or not isinstance(args[0], list | str):
            raise HostCallError("exec(command): an argv array or a shell command string")
        argv = ["/bin/sh", "-c", args[0]] if isinstance(args[0], str) else args[0]
        remaining = max(1.0, self._deadline - trio.current_time())
        request = ExecRequest(command=argv, timeout_s=min(remaining, 3600), wait=True)
        result = await self._manager.guest.exec(
            self._vm_id, request, wait_agent_s=self._agent_wait()
        )
        return result.model_dump(mode="json", exclude_none=True)

    async def _read_file(self, args: list[Any]) -> object:
        if len(args) != 1 or not isinstance(args[0], str):
            raise HostCallError("read_file(path): one absolute guest path")
        content = await self._manager.guest.read_file(
            self._vm_id, FileReadRequest(path=args[0]), wait_agent_s=self._agent_wait()
        )
        if content.text is None:
            raise HostCallError(f"{args[0]} is not UTF-8 text; read it through the REST API")
        return content.text

    async def _write_file(self, args: list[Any]) -> object:
        if len(args) != 2 or not all(isinstance(a, str) for a in args):
            raise HostCallError("write_file(path, text)")
        request = FileWriteRequest(path=args[0], text=args[1])
        written = await self._manager.guest.write_file(
            self._vm_id, request, wait_agent_s=self._agent_wait()
        )
        return written.model_dump(mode="json")

    def _agent_wait(self) -> float:
        """A script right after a boot waits for the guest agent, within its own time."""
        return max(0.0, min(_AGENT_WAIT_S, self._deadline - trio.current_time()))


def _first_problem(err: ValidationError) -> str:
    first = err.errors(include_url=False, include_input=False)[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def _arity(name: str, args: list[Any], count: int) -> None:
    if len(args) != count:
        raise HostCallError(f"{name}() takes {count} argument(s), got {len(args)}")


class ScriptService:
    """Runs scripts for the API and tools, at most ``max_concurrent`` at a time."""

    def __init__(
        self, manager: Manager, runtime: RhaiRuntime, *, max_concurrent: int, ceiling: Limits
    ) -> None:
        self._manager = manager
        self._runtime = runtime
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._ceiling = ceiling

    async def run(self, request: ScriptRequest, vm_id: str | None = None) -> ScriptResponse:
        """Run ``request`` with ``vm`` bound to ``vm_id`` (or no VM).

        Raises:
            UnsupportedLanguage, ValidationFailed (limits), VmNotFound,
            ScriptSyntaxError, ScriptRuntimeError, ScriptLimitExceeded.
        """
        if request.language != "rhai":
            raise UnsupportedLanguage(
                f"language {request.language!r} is not supported", supported=["rhai"]
            )
        if vm_id is not None:
            self._manager.get(vm_id)  # 404 before any work
        try:
            limits = self._ceiling.lowered(**(request.limits or {}))
        except ValueError as err:
            raise ValidationFailed(f"limits: {err}", field="limits") from err
        async with self._limiter:
            deadline = trio.current_time() + limits.timeout_ms / 1000
            run = functools.partial(
                self._runtime.run,
                request.code,
                args=request.args,
                limits=limits,
                **self._bindings(vm_id, deadline),
            )
            try:
                result = await trio.to_thread.run_sync(run)
            except ScriptFailure as failure:
                self._manager.telemetry.script_run(_OUTCOMES.get(failure.kind, failure.kind))
                raise _translate(failure) from failure
            self._manager.telemetry.script_run("ok")
        return ScriptResponse(
            result=result.result,
            result_type=result.result_type,
            output=result.output,
            duration_ms=round(result.duration_ms, 3),
            operations=result.operations,
        )

    def _bindings(self, vm_id: str | None, deadline: float) -> dict[str, Any]:
        if vm_id is None:
            return {}
        binding = _VmBinding(self._manager, vm_id, deadline, current_caller())
        token = trio.lowlevel.current_trio_token()

        def host_call(request: dict[str, Any]) -> object:
            try:
                return trio.from_thread.run(binding.dispatch, request, trio_token=token)
            except HMError as err:
                raise HostCallError(f"{err.code}: {err.message}") from err

        return {"objects": {"vm": VM_OBJECT}, "host_call": host_call}


# ScriptFailure.kind -> the outcome label of the scripts counter in /metrics.
_OUTCOMES = {"syntax": "syntax_error", "runtime": "runtime_error", "limit": "limit"}


def _translate(failure: ScriptFailure) -> HMError:
    details = {
        "line": failure.line,
        "column": failure.column,
        "message": failure.message,
        "output": failure.output,
    }
    if failure.kind == "syntax":
        return ScriptSyntaxError(f"syntax error: {failure.message}", **details)
    if failure.kind == "limit":
        return ScriptLimitExceeded(
            f"script limit exceeded: {failure.message}", limit=failure.limit, **details
        )
    return ScriptRuntimeError(f"script error: {failure.message}", **details)
