"""Running a Rhai script against one VM: the host API a script sees, and the service.

A script runs on a Trio worker thread (the Wasmtime call releases the GIL, so the
API keeps answering); the number of concurrent scripts is bounded. Every host
call (``vm.start()``, ``vm.state`` …) hops back to Trio with
``trio.from_thread.run`` and is one operation of :mod:`hypermachine.operations`,
dispatched as the caller who ran the script: the same input models, access check
and audit as the REST API, bounded by the script's own deadline. A bad argument
is a script runtime error naming the field, never an exception in the server.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Mapping
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
    validation_failed,
)
from ..hypervisor.manager import Manager
from ..models import ScriptRequest, ScriptResponse, Vm, VmState
from ..operations.declare import to_jsonable
from .runtime import HostCallError, HostObject, Limits, RhaiRuntime, ScriptFailure

__all__ = ["VM_OBJECT", "ScriptService"]

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

Handler = Callable[[list[Any]], Awaitable[object]]
Dispatch = Callable[[str, Mapping[str, Any]], Awaitable[object]]

# The longest a guest call in a script waits for qemu-ga to come up after a boot.
_AGENT_WAIT_S = 60.0


async def _unmetered() -> None:
    """No rate limit counts these host calls (a script run without a key's meter)."""


class _VmBinding:
    """The ``vm`` object of one script run: each method is one operation, dispatched
    as the script's caller (validated by the operation's own input model)."""

    def __init__(
        self, dispatch: Dispatch, vm_id: str, deadline: float, meter: Callable[[], Awaitable[None]]
    ) -> None:
        self._call = dispatch
        self._meter = meter
        self._vm_id = vm_id
        self._deadline = deadline
        self._methods: dict[str, Handler] = {
            "info": self._info,
            "start": self._lifecycle("start_vm"),
            "pause": self._lifecycle("pause_vm"),
            "resume": self._lifecycle("resume_vm"),
            "reboot": self._lifecycle("reboot_vm"),
            "stop": self._stop,
            "wait_for": self._wait_for,
            "metrics": self._metrics,
            "qmp": self._qmp,
            "exec": self._exec,
            "read_file": self._read_file,
            "write_file": self._write_file,
        }

    async def dispatch(self, request: dict[str, Any]) -> object:
        if request.get("object") != "vm":
            raise HostCallError(f"unknown host call {str(request)[:200]}")
        with trio.move_on_at(self._deadline):
            try:
                if "property" in request:
                    return await self._property(str(request["property"]))
                method = self._methods.get(str(request.get("method")))
                if method is None:
                    raise HostCallError(f"vm has no method {str(request.get('method'))[:100]!r}")
                return await method(list(request.get("args") or []))
            except ValidationError as err:
                raise HostCallError(f"invalid arguments: {validation_failed(err).message}") from err
        raise HostCallError("the script ran out of time during a host call")

    async def _run(self, operation: str, **arguments: Any) -> Any:
        await self._meter()  # each host call is a request of the caller's key
        return await self._call(operation, {"vm_id": self._vm_id, **arguments})

    async def _vm(self) -> Vm:
        vm: Vm = await self._run("get_vm")
        return vm

    async def _property(self, name: str) -> object:
        if name not in VM_OBJECT.properties:
            raise HostCallError(f"vm has no property {name[:100]!r}")
        value = getattr(await self._vm(), name)
        return value.value if isinstance(value, VmState) else value

    async def _info(self, args: list[Any]) -> object:
        _arity("info", args, 0)
        return (await self._vm()).model_dump(mode="json")

    def _lifecycle(self, operation: str) -> Handler:
        async def call(args: list[Any]) -> object:
            _arity(operation.removesuffix("_vm"), args, 0)
            answer = await self._run(operation)
            return to_jsonable(answer)["state"]

        return call

    async def _stop(self, args: list[Any]) -> object:
        """``vm.stop()`` or ``vm.stop(#{force: true, timeout_s: 10})``."""
        if len(args) > 1 or (args and not isinstance(args[0], dict)):
            raise HostCallError("stop takes an optional map #{force: bool, timeout_s: number}")
        options = args[0] if args else {}
        return to_jsonable(await self._run("stop_vm", **options))["state"]

    async def _wait_for(self, args: list[Any]) -> object:
        """``vm.wait_for("running", 30000)``: the timeout is in milliseconds."""
        if not 1 <= len(args) <= 2:
            raise HostCallError('wait_for(state, timeout_ms) e.g. vm.wait_for("running", 30000)')
        timeout_ms = args[1] if len(args) == 2 else 60_000
        timeout_s: object = timeout_ms
        if isinstance(timeout_ms, int | float) and not isinstance(timeout_ms, bool):
            remaining = max(0.001, self._deadline - trio.current_time())
            # NaN and infinities reach the model (which refuses them); a number is
            # clamped to the script's own time.
            finite = math.isfinite(timeout_ms)
            timeout_s = min(timeout_ms / 1000, remaining) if finite else timeout_ms
        vm = await self._run("wait_for_vm", state=args[0], timeout_s=timeout_s)
        return vm.state.value

    async def _metrics(self, args: list[Any]) -> object:
        _arity("metrics", args, 0)
        return to_jsonable(await self._run("get_vm_metrics"))

    async def _qmp(self, args: list[Any]) -> object:
        if not 1 <= len(args) <= 2:
            raise HostCallError('qmp(command, args) e.g. vm.qmp("query-status", #{})')
        arguments = args[1] if len(args) == 2 else None
        answer = await self._run("query_vm_qmp", command=args[0], arguments=arguments)
        return answer["return"]

    async def _exec(self, args: list[Any]) -> object:
        """``vm.exec(["uname", "-a"])`` or ``vm.exec("echo hi | wc -c")`` (run by /bin/sh)."""
        if len(args) != 1:
            raise HostCallError("exec(command): an argv array or a shell command string")
        command = ["/bin/sh", "-c", args[0]] if isinstance(args[0], str) else args[0]
        remaining = max(1.0, self._deadline - trio.current_time())
        answer = await self._run(
            "exec_in_vm",
            command=command,
            timeout_s=min(remaining, 3600),
            wait=True,
            wait_agent_s=self._agent_wait(),
        )
        result: dict[str, Any] = {k: v for k, v in to_jsonable(answer).items() if v is not None}
        return result

    async def _read_file(self, args: list[Any]) -> object:
        if len(args) != 1:
            raise HostCallError("read_file(path): one absolute guest path")
        content = await self._run("read_vm_file", path=args[0], wait_agent_s=self._agent_wait())
        if content.text is None:
            raise HostCallError(f"{args[0]} is not UTF-8 text; read it through the REST API")
        return content.text

    async def _write_file(self, args: list[Any]) -> object:
        if len(args) != 2:
            raise HostCallError("write_file(path, text)")
        written = await self._run(
            "write_vm_file", path=args[0], text=args[1], wait_agent_s=self._agent_wait()
        )
        return to_jsonable(written)

    def _agent_wait(self) -> float:
        """A script right after a boot waits for the guest agent, within its own time."""
        return max(0.0, min(_AGENT_WAIT_S, self._deadline - trio.current_time()))


def _arity(name: str, args: list[Any], count: int) -> None:
    if len(args) != count:
        raise HostCallError(f"{name}() takes {count} argument(s), got {len(args)}")


class ScriptService:
    """Runs scripts for the API and tools: at most ``max_concurrent`` at a time, and at
    most ``per_tenant`` of them for one tenant (a tenant's extra scripts queue on its
    own share, never on the slots others need)."""

    def __init__(
        self,
        manager: Manager,
        runtime: RhaiRuntime,
        *,
        max_concurrent: int,
        ceiling: Limits,
        per_tenant: int | None = None,
    ) -> None:
        self._manager = manager
        self._runtime = runtime
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._per_tenant = max(1, min(per_tenant or max_concurrent, max_concurrent))
        self._tenants: dict[str, trio.CapacityLimiter] = {}
        self._ceiling = ceiling

    def _share(self, tenant: str) -> trio.CapacityLimiter:
        return self._tenants.setdefault(tenant, trio.CapacityLimiter(self._per_tenant))

    async def run(
        self,
        request: ScriptRequest,
        vm_id: str | None = None,
        *,
        dispatch: Dispatch | None = None,
        tenant: str = "",
        meter: Callable[[], Awaitable[None]] | None = None,
    ) -> ScriptResponse:
        """Run ``request`` with ``vm`` bound to ``vm_id`` (or no VM); the script's host
        calls go through ``dispatch`` (the operation layer, as the script's caller), each
        first counted by ``meter`` (the caller's rate limit). ``tenant`` names the share
        of script slots it runs in.

        Raises:
            UnsupportedLanguage, ValidationFailed (limits), VmNotFound,
            ScriptSyntaxError, ScriptRuntimeError, ScriptLimitExceeded.
        """
        if request.language != "rhai":
            raise UnsupportedLanguage(
                f"language {request.language!r} is not supported", supported=["rhai"]
            )
        try:
            limits = self._ceiling.lowered(**(request.limits or {}))
        except ValueError as err:
            raise ValidationFailed(f"limits: {err}", field="limits") from err
        # The deadline starts before the queue: waiting for a slot counts as the script's time.
        deadline = trio.current_time() + limits.timeout_ms / 1000
        with trio.move_on_at(deadline) as queued:
            await self._share(tenant).acquire()
        if queued.cancelled_caught:
            self._manager.telemetry.script_run("limit")
            raise ScriptLimitExceeded(
                "script limit exceeded: no script slot came free within the timeout",
                limit="timeout_ms",
                output=[],
            )
        try:
            async with self._limiter:
                return await self._run_in_slot(request, vm_id, limits, deadline, dispatch, meter)
        finally:
            self._share(tenant).release()

    async def _run_in_slot(
        self,
        request: ScriptRequest,
        vm_id: str | None,
        limits: Limits,
        deadline: float,
        dispatch: Dispatch | None,
        meter: Callable[[], Awaitable[None]] | None,
    ) -> ScriptResponse:
        # Time spent queued for a slot is the script's own time too.
        remaining_ms = int((deadline - trio.current_time()) * 1000)
        limits = limits.lowered(timeout_ms=max(1, min(limits.timeout_ms, remaining_ms)))
        run = functools.partial(
            self._runtime.run,
            request.code,
            args=request.args,
            limits=limits,
            **self._bindings(vm_id, deadline, dispatch, meter),
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

    def _bindings(
        self,
        vm_id: str | None,
        deadline: float,
        dispatch: Dispatch | None,
        meter: Callable[[], Awaitable[None]] | None,
    ) -> dict[str, Any]:
        if vm_id is None or dispatch is None:
            return {}
        binding = _VmBinding(dispatch, vm_id, deadline, meter or _unmetered)
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
