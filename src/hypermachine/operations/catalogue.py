"""The VM, guest, host and image operations: one declaration and one handler each.

A handler gets the call's :class:`~.declare.Context` (for a ``TENANT`` operation
its VM, already found in the caller's scope) and its validated input, calls the
manager, and returns a model, a dict or one of the stream results of
:mod:`.declare`. To add an operation: its input model in :mod:`.inputs`, a short
handler here and one :class:`~.declare.Operation` in :func:`vm_operations`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from .. import __version__
from ..cluster.etcd import EtcdError
from ..errors import (
    ClusterUnavailable,
    ConsoleBusy,
    ExecNotFound,
    GuestAgentUnavailable,
    GuestFileTooLarge,
    GuestOperationFailed,
    GuestPathNotFound,
    HypervisorError,
    ImageNotFound,
    InsufficientResources,
    InvalidState,
    NameTaken,
    NodeNotFound,
    NotConfidential,
    OwnedElsewhere,
    ScriptLimitExceeded,
    ScriptRuntimeError,
    ScriptSyntaxError,
    Unsupported,
    UnsupportedLanguage,
    ValidationFailed,
    VmNotFound,
    WaitTimeout,
)
from ..hypervisor.qemu.qmp_commands import READ_ONLY_QMP
from ..models import (
    ConsoleToken,
    ConsoleTokenRequest,
    CreateVmRequest,
    Event,
    ExecRequest,
    ExecResult,
    FileContent,
    FileReadRequest,
    FileWriteRequest,
    FileWritten,
    HostCapabilities,
    HostDevices,
    LifecycleRequest,
    ScriptRequest,
    ScriptResponse,
    StopRequest,
    Vm,
    VmList,
    VmMetrics,
    VmState,
)
from ..security.caller import Caller
from ..security.tokens import ConsoleKind
from ..store import VmQuery
from ..telemetry import CONTENT_TYPE
from .declare import (
    Access,
    Answer,
    ByteStream,
    Context,
    Document,
    EventStream,
    HttpRoute,
    Operation,
    QueryParam,
    RawJson,
)
from .inputs import (
    DEFAULT_WAIT_S,
    ConsoleLogInput,
    ConsoleSessionInput,
    ConsoleTokenInput,
    CreateVmInput,
    DeleteVmInput,
    EventsInput,
    ExecIdInput,
    ExecInVmInput,
    HostCapabilitiesInput,
    ListImagesInput,
    ListVmsInput,
    NoInput,
    QmpInput,
    ReadVmFileInput,
    RunVmScriptInput,
    StartVmInput,
    StopVmInput,
    UploadVmFileInput,
    VmIdInput,
    WaitForVmInput,
    WriteVmFileInput,
)

__all__ = ["visibility", "vm_operations"]

_VM = "/api/v1/vms/{vm_id}"


# -- VMs ------------------------------------------------------------------------------


async def _list_vms(ctx: Context, args: ListVmsInput) -> RawJson:
    query = VmQuery(
        states=tuple(args.state or ()),
        name=args.name,
        labels=args.labels or {},
        limit=args.limit,
        cursor=args.cursor,
    )
    views = ctx.services.views
    if views is None:
        return RawJson(ctx.services.manager.list_json(query))
    try:
        vms, cursor = await views.page(query)
    except EtcdError as err:
        raise ClusterUnavailable(f"the cluster's VMs cannot be read: {err}") from err
    return RawJson(VmList(vms=vms, next_cursor=cursor).model_dump_json())


async def _get_vm(ctx: Context, _args: VmIdInput) -> Vm:
    vm: Vm = ctx.vm
    return vm


async def _create_vm(ctx: Context, args: CreateVmInput) -> Answer:
    manager = ctx.services.manager
    request = CreateVmRequest.model_validate(args.model_dump(exclude={"idempotency_key"}))
    created = await manager.create(request, args.idempotency_key)
    vm: Vm = created.vm
    if args.wait and not created.replayed:
        target = VmState.RUNNING if args.start else VmState.STOPPED
        vm = await manager.wait_for(vm.id, {target}, DEFAULT_WAIT_S)
    headers = {"Location": f"/api/v1/vms/{vm.id}"}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Answer(vm, status=201, headers=headers, target=vm.id)


async def _delete_vm(ctx: Context, args: DeleteVmInput) -> Answer:
    await ctx.services.manager.delete(args.vm_id, force=args.force)
    return Answer({"deleted": True, "vm_id": args.vm_id}, status=204)


async def _settle(ctx: Context, vm: Vm, wait: bool, timeout_s: float, target: VmState) -> Answer:
    """The VM once in ``target`` (with wait), else at once: 202 while not there yet."""
    if wait:
        vm = await ctx.services.manager.wait_for(vm.id, {target}, timeout_s)
    return Answer(vm, status=200 if vm.state is target else 202)


async def _start_vm(ctx: Context, args: StartVmInput) -> Answer:
    manager = ctx.services.manager
    vm = await manager.start(args.vm_id)
    if not args.wait:
        return Answer(vm, status=202)
    started = await manager.wait_started(vm.id, args.timeout_s or DEFAULT_WAIT_S)
    return Answer(started, status=200)  # running, or paused as it was hibernated


async def _stop_vm(ctx: Context, args: StopVmInput) -> Answer:
    manager = ctx.services.manager
    vm = await manager.stop(args.vm_id, force=args.force, timeout_s=args.timeout_s)
    # The wait covers the ACPI grace period too, so give it room beyond that.
    wait_s = (args.timeout_s or ctx.services.settings.stop_timeout_s) + DEFAULT_WAIT_S
    return await _settle(ctx, vm, args.wait, wait_s, VmState.STOPPED)


def _simple(method: str) -> Callable[[Context, VmIdInput], Any]:
    async def handler(ctx: Context, args: VmIdInput) -> Vm:
        vm: Vm = await getattr(ctx.services.manager, method)(args.vm_id)
        return vm

    return handler


async def _wait_for_vm(ctx: Context, args: WaitForVmInput) -> Vm:
    vm: Vm = await ctx.services.manager.wait_for(args.vm_id, set(args.state), args.timeout_s)
    return vm


async def _vm_metrics(ctx: Context, args: VmIdInput) -> VmMetrics:
    metrics: VmMetrics = await ctx.services.manager.metrics(args.vm_id)
    return metrics


async def _vm_attestation(ctx: Context, args: VmIdInput) -> dict[str, object]:
    report: dict[str, object] = await ctx.services.manager.attestation(args.vm_id)
    return report


async def _query_qmp(ctx: Context, args: QmpInput) -> dict[str, object]:
    if args.command not in READ_ONLY_QMP:
        raise ValidationFailed(
            f"QMP command {args.command!r} is not allowed; allowed: "
            + ", ".join(sorted(READ_ONLY_QMP)),
            field="command",
        )
    reply = await ctx.services.manager.qmp(args.vm_id, args.command, args.arguments or None)
    return {"return": reply}


# -- scripts --------------------------------------------------------------------------


async def _run_vm_script(ctx: Context, args: RunVmScriptInput) -> ScriptResponse:
    response: ScriptResponse = await ctx.services.scripts.run(
        args,  # a ScriptRequest (plus the VM id), validated once
        vm_id=args.vm_id,
        dispatch=ctx.dispatch,
        tenant=ctx.caller.tenant,
        meter=ctx.meter,
    )
    return response


def _script_audit(args: RunVmScriptInput) -> dict[str, object]:
    code = args.code.encode()
    return {"size": len(code), "sha256": hashlib.sha256(code).hexdigest()}


# -- the guest ------------------------------------------------------------------------


async def _exec_in_vm(ctx: Context, args: ExecInVmInput) -> Answer:
    result: ExecResult = await ctx.services.manager.guest.exec(
        args.vm_id,
        args,
        wait_agent_s=args.wait_agent_s,  # an ExecRequest, validated once
    )
    if args.wait:
        return Answer(result)
    location = f"/api/v1/vms/{args.vm_id}/exec/{result.exec_id}"
    return Answer(result, status=202, headers={"Location": location})


def _exec_audit(args: ExecInVmInput) -> dict[str, object]:
    """The argv; never the stdin or the environment's values."""
    return {"command": args.command, "env_keys": sorted(args.env), "wait": args.wait}


async def _list_execs(ctx: Context, args: VmIdInput) -> dict[str, object]:
    results = ctx.services.manager.guest.exec_list(args.vm_id)
    return {"execs": [r.model_dump(mode="json") for r in results]}


async def _get_exec(ctx: Context, args: ExecIdInput) -> ExecResult:
    result: ExecResult = ctx.services.manager.guest.exec_status(args.vm_id, args.exec_id)
    return result


async def _stream_exec(ctx: Context, args: ExecIdInput) -> EventStream:
    svc = ctx.services
    svc.manager.guest.exec_status(args.vm_id, args.exec_id)  # ExecNotFound before the stream
    items = svc.manager.guest.exec_stream(
        args.vm_id, args.exec_id, idle_s=svc.settings.sse_keepalive_s
    )

    async def messages() -> AsyncIterator[tuple[str, object, str | None] | None]:
        async for item in items:
            if item is None:
                yield None
            elif isinstance(item, ExecResult):
                yield "exit", item.model_dump(mode="json"), None
                return
            else:
                yield item.stream, item.model_dump(mode="json", exclude_none=True), None

    return EventStream(messages())


async def _read_vm_file(ctx: Context, args: ReadVmFileInput) -> FileContent:
    content: FileContent = await ctx.services.manager.guest.read_file(
        args.vm_id, FileReadRequest(path=args.path), wait_agent_s=args.wait_agent_s
    )
    return content


async def _download_vm_file(ctx: Context, args: ReadVmFileInput) -> ByteStream:
    reader = await ctx.services.manager.guest.open_file(
        args.vm_id, FileReadRequest(path=args.path), wait_agent_s=args.wait_agent_s
    )
    return ByteStream(reader.chunks(), headers={"X-Guest-File-Size": str(reader.size)})


async def _write_vm_file(ctx: Context, args: WriteVmFileInput) -> FileWritten:
    request = FileWriteRequest.model_validate(args.model_dump(exclude={"vm_id", "wait_agent_s"}))
    written: FileWritten = await ctx.services.manager.guest.write_file(
        args.vm_id, request, wait_agent_s=args.wait_agent_s
    )
    return written


def _write_audit(args: WriteVmFileInput) -> dict[str, object]:
    if args.text is not None:
        return {"path": args.path, "size": len(args.text.encode())}
    return {"path": args.path, "size": len(base64.b64decode(args.content_b64 or ""))}


async def _upload_vm_file(ctx: Context, args: UploadVmFileInput) -> FileWritten:
    limit = ctx.services.settings.file_max_bytes
    if len(args.data) > limit:
        raise GuestFileTooLarge(f"the file is larger than the limit of {limit} bytes")
    written: FileWritten = await ctx.services.manager.guest.write_bytes(
        args.vm_id, args.path, args.data, wait_agent_s=args.wait_agent_s
    )
    return written


def _upload_audit(args: UploadVmFileInput) -> dict[str, object]:
    return {"path": args.path, "size": len(args.data)}


# -- the console ----------------------------------------------------------------------


async def _console_log(ctx: Context, args: ConsoleLogInput) -> dict[str, object]:
    lines = ctx.services.manager.console.log(args.vm_id, args.tail)
    return {"vm_id": args.vm_id, "lines": lines}


async def _console_token(ctx: Context, args: ConsoleTokenInput) -> ConsoleToken:
    if args.kind == "vnc" and ctx.vm.display.type != "vnc":
        raise ValidationFailed("the VM was created without a display", field="kind")
    tokens = ctx.services.console_tokens
    token = tokens.issue(ctx.caller, args.vm_id, args.kind)
    return ConsoleToken(token=token, kind=args.kind, expires_in=tokens.ttl_s)


def _spend_token(ctx: Context, args: ConsoleSessionInput, kind: ConsoleKind) -> None:
    if args.token is not None:
        ctx.services.console_tokens.redeem(args.token, ctx.caller, args.vm_id, kind)


async def _open_console(
    ctx: Context, args: ConsoleSessionInput
) -> contextlib.AbstractAsyncContextManager[trio.SocketStream]:
    """The console, held for this caller until the face leaves the returned context."""
    _spend_token(ctx, args, "serial")
    console = ctx.services.manager.console
    stream = await console.open(args.vm_id)
    return _held(ctx, "close_vm_console", args.vm_id, stream, lambda: console.release(args.vm_id))


async def _open_display(
    ctx: Context, args: ConsoleSessionInput
) -> contextlib.AbstractAsyncContextManager[trio.SocketStream]:
    """The VM's VNC server, until the face leaves the returned context."""
    _spend_token(ctx, args, "vnc")
    stream = await ctx.services.manager.console.open_display(args.vm_id)
    return _held(ctx, "close_vm_display", args.vm_id, stream, lambda: None)


@contextlib.asynccontextmanager
async def _held(
    ctx: Context, closing: str, vm_id: str, stream: trio.SocketStream, release: Callable[[], None]
) -> AsyncIterator[trio.SocketStream]:
    try:
        async with stream:
            yield stream
    finally:
        release()
        ctx.audit(closing, vm_id, "ok", {})


# -- events ---------------------------------------------------------------------------


def visibility(caller: Caller, manager: Any) -> Callable[[Event], bool]:
    """Which events the caller may see: its own tenant's VMs' (all, for admins).

    A VM's tenant is looked up once per stream; a VM the server no longer knows is
    hidden from non-admins (fail closed) unless it was seen while it existed.
    """
    owners: dict[str, str | None] = {}

    def visible(event: Event) -> bool:
        if caller.admin or event.vm_id is None:
            return True
        if event.vm_id not in owners:
            owners[event.vm_id] = manager.owner_of(event.vm_id)
        owner = owners[event.vm_id]
        return owner is not None and caller.sees(owner)

    return visible


async def _follow_events(ctx: Context, args: EventsInput) -> EventStream:
    svc = ctx.services
    latest = svc.manager.events.latest_id()
    if args.after is not None and args.after > latest:
        raise ValidationFailed(
            f"there is no event {args.after} yet (the latest is {latest})", field="after"
        )
    start = latest if args.after is None else args.after
    # Not checked against live VMs: a deleted VM's history (ending in vm.deleted) stays readable.
    follow = svc.manager.events.follow(start, vm_id=args.vm_id, idle_s=svc.settings.sse_keepalive_s)
    visible = visibility(ctx.caller, svc.manager)

    async def messages() -> AsyncIterator[tuple[str, object, str | None] | None]:
        async for event in follow:
            if event is None:
                yield None
            elif visible(event):
                yield event.type.value, event.model_dump(mode="json"), str(event.id)

    return EventStream(messages())


# -- host, images, server -------------------------------------------------------------


async def _list_images(ctx: Context, _args: ListImagesInput) -> dict[str, Any]:
    return {"images": [image.to_dict() for image in ctx.services.catalogue.list()]}


async def _host_capabilities(ctx: Context, args: HostCapabilitiesInput) -> HostCapabilities:
    caps: HostCapabilities = await ctx.services.manager.host_capabilities(refresh=args.refresh)
    return caps


async def _host_devices(ctx: Context, _args: NoInput) -> HostDevices:
    devices: HostDevices = await ctx.services.manager.host_devices()
    if ctx.caller.admin:
        return devices
    manager = ctx.services.manager
    shown = []
    for device in devices.devices:
        holder = device.in_use_by
        if holder is not None and not ctx.caller.sees(manager.owner_of(holder) or ""):
            device = device.model_copy(update={"in_use_by": "another tenant"})
        shown.append(device)
    return devices.model_copy(update={"devices": shown})


async def _health(ctx: Context, _args: NoInput) -> dict[str, object]:
    svc = ctx.services
    host = svc.manager.host
    return {
        "status": "healthy",
        "version": __version__,
        "uptime_seconds": round(trio.current_time() - svc.started_at, 3),
        "accelerator": host.accelerator,
        "accelerator_reason": host.accelerator_reason,
        "qemu_version": host.qemu_version,
        "live_vms": svc.manager.live_machines(),
        "auth": svc.security.mode() if svc.security is not None else "open",
        "qemu_user": svc.manager.qemu_identity.name if svc.manager.qemu_identity else None,
    }


async def _prometheus(ctx: Context, _args: NoInput) -> Document:
    manager = ctx.services.manager
    return Document(await manager.telemetry.render(manager), CONTENT_TYPE)


# -- the declarations -----------------------------------------------------------------

_WAIT_QUERY = (
    QueryParam("wait", description="Return only once the VM reached the target state."),
    QueryParam("timeout", "timeout_s", "With wait: give up after this many seconds (default 60)."),
)
_WAIT_AGENT = QueryParam(
    "wait_agent", "wait_agent_s", "Wait this long for the guest agent (after a boot)."
)
_CONSOLE_TOKEN = QueryParam(
    "token", description="A console token (create_console_token), for browsers."
)
_GUEST_PATH = QueryParam("path", description="Absolute path in the guest.", required=True)
_VM_RETURNS = "the VM object (id, name, state, state_reason, spec, pid, timestamps)."
_GUEST_ERRORS = (VmNotFound, InvalidState, GuestAgentUnavailable, GuestOperationFailed)
_FILE_ERRORS = (*_GUEST_ERRORS, GuestPathNotFound, GuestFileTooLarge)


def _lifecycle(name: str, verb: str, title: str, summary: str, returns: str) -> Operation:
    return Operation(
        name=name,
        title=title,
        summary=summary,
        returns=returns,
        input=VmIdInput,
        handler=_simple(verb),
        access=Access.TENANT,
        mutates=True,
        result=Vm,
        errors=(VmNotFound, InvalidState, HypervisorError),
        http=HttpRoute("POST", f"{_VM}/{verb}"),  # answered once done: nothing to wait for
    )


def _vm_core() -> list[Operation]:
    return [
        Operation(
            name="list_vms",
            title="List VMs",
            summary=(
                "List your virtual machines in the order they were created, optionally "
                "filtered by state, name or labels. Use it to find a VM's id or to see what "
                "exists. In a cluster it lists your VMs of every node (each names its node; "
                "a down node's VMs are 'unknown')."
            ),
            returns="{vms: [VM objects], next_cursor}; pass next_cursor back for more.",
            input=ListVmsInput,
            handler=_list_vms,
            access=Access.KEY,
            result=VmList,
            errors=(ClusterUnavailable,),
            idempotent=True,
            http=HttpRoute(
                "GET",
                "/api/v1/vms",
                query=(
                    QueryParam(
                        "state",
                        description="Only these states (repeat, or separate with commas).",
                        repeated=True,
                    ),
                    QueryParam("name", description="Only the VM with this name."),
                    QueryParam(
                        "label",
                        "labels",
                        "key=value; repeat for several labels (all must match).",
                        repeated=True,
                    ),
                    QueryParam("limit", description="Page size (default 100)."),
                    QueryParam("cursor", description="next_cursor of the last page."),
                ),
            ),
        ),
        Operation(
            name="get_vm",
            title="Get a VM",
            summary="Read one VM: its spec, current state (and why), pid and timestamps.",
            returns=_VM_RETURNS,
            input=VmIdInput,
            handler=_get_vm,
            access=Access.TENANT,
            result=Vm,
            errors=(VmNotFound, ClusterUnavailable),
            idempotent=True,
            cluster_view=True,
            http=HttpRoute("GET", _VM),
        ),
        Operation(
            name="create_vm",
            title="Create a VM",
            summary=(
                "Create a virtual machine from a catalogue image (see list_images). It is "
                "'creating' while its disk is made, then 'stopped'. Set start=true to boot "
                "it right away and wait=true to return only once it is stopped/running."
            ),
            returns=_VM_RETURNS,
            input=CreateVmInput,
            handler=_create_vm,
            access=Access.KEY,
            mutates=True,
            result=Vm,
            errors=(
                ImageNotFound,
                NameTaken,
                Unsupported,
                InvalidState,
                WaitTimeout,
                NodeNotFound,
                InsufficientResources,
                ClusterUnavailable,
            ),
            http=HttpRoute(
                "POST",
                "/api/v1/vms",
                status=201,
                body=CreateVmRequest,
                headers=(
                    QueryParam(
                        "Idempotency-Key",
                        "idempotency_key",
                        "Retries with the same key and body return the first VM (24 h).",
                    ),
                ),
            ),
        ),
        Operation(
            name="delete_vm",
            title="Delete a VM",
            summary=(
                "Delete a VM and its disk for good. A live VM is refused unless force=true, "
                "which kills it first. Cannot be undone."
            ),
            returns="{deleted: true, vm_id}.",
            input=DeleteVmInput,
            handler=_delete_vm,
            access=Access.TENANT,
            mutates=True,
            errors=(VmNotFound, InvalidState),
            destructive=True,
            http=HttpRoute(
                "DELETE",
                _VM,
                status=204,
                query=(QueryParam("force", description="Kill a live VM first."),),
            ),
        ),
        Operation(
            name="start_vm",
            title="Start a VM",
            summary=(
                "Boot a stopped (or failed) VM, or resume a hibernated one where it was. "
                "Returns at once with state 'starting' ('restoring' for a hibernated VM); "
                "with wait=true it returns once QEMU reports 'running' (or 'paused', for a "
                "VM hibernated paused), or 409 INVALID_STATE with the reason when the "
                "start fails. The guest OS may need more seconds to be usable."
            ),
            returns=_VM_RETURNS,
            input=StartVmInput,
            handler=_start_vm,
            access=Access.TENANT,
            mutates=True,
            result=Vm,
            errors=(
                VmNotFound,
                InvalidState,
                ImageNotFound,
                WaitTimeout,
                HypervisorError,
                OwnedElsewhere,
                ClusterUnavailable,
            ),
            http=HttpRoute(
                "POST",
                f"{_VM}/start",
                body=LifecycleRequest,
                body_optional=True,
                query=_WAIT_QUERY,
                also=(202,),
            ),
        ),
        Operation(
            name="stop_vm",
            title="Stop a VM",
            summary=(
                "Shut a VM down: ACPI power-off, quitting QEMU if the guest has not powered "
                "off within timeout_s (default 30). force=true quits at once (like pulling "
                "the plug). With wait=true it returns once the VM is 'stopped'."
            ),
            returns=_VM_RETURNS,
            input=StopVmInput,
            handler=_stop_vm,
            access=Access.TENANT,
            mutates=True,
            result=Vm,
            errors=(VmNotFound, InvalidState, WaitTimeout, HypervisorError),
            http=HttpRoute(
                "POST",
                f"{_VM}/stop",
                body=StopRequest,
                body_optional=True,
                query=(*_WAIT_QUERY, QueryParam("force", description="Quit QEMU at once.")),
                also=(202,),
            ),
        ),
        _lifecycle(
            "pause_vm",
            "pause",
            "Pause a VM",
            "Freeze a running VM's vCPUs (memory stays; resume_vm continues it).",
            _VM_RETURNS + " State 'paused'.",
        ),
        _lifecycle(
            "resume_vm",
            "resume",
            "Resume a VM",
            "Let a paused VM run again.",
            _VM_RETURNS + " State 'running'.",
        ),
        _lifecycle(
            "reboot_vm",
            "reboot",
            "Reboot a VM",
            "Hard-reset a running VM (like the reset button); it stays 'running'.",
            _VM_RETURNS,
        ),
        Operation(
            name="wait_for_vm",
            title="Wait for a VM state",
            summary=(
                "Block until a VM reaches one of the given states (e.g. ['running'] after "
                "start_vm, ['stopped'] after stop_vm), for at most timeout_s seconds."
            ),
            returns=_VM_RETURNS,
            input=WaitForVmInput,
            handler=_wait_for_vm,
            access=Access.TENANT,
            result=Vm,
            errors=(VmNotFound, WaitTimeout, InvalidState),
            idempotent=True,
            http=HttpRoute(
                "GET",
                f"{_VM}/wait",
                query=(
                    QueryParam(
                        "state",
                        description="The state(s) to wait for.",
                        required=True,
                        repeated=True,
                    ),
                    QueryParam("timeout", "timeout_s", "Give up after this many seconds."),
                ),
            ),
        ),
        Operation(
            name="get_vm_metrics",
            title="VM metrics",
            summary=(
                "Measure a running or paused VM: vCPUs, CPU % of the QEMU process since "
                "the previous call, resident memory, disk I/O counters, uptime."
            ),
            returns="{vm_id, vcpus, cpu_percent, memory_rss_bytes, disk..., uptime_seconds}.",
            input=VmIdInput,
            handler=_vm_metrics,
            access=Access.TENANT,
            result=VmMetrics,
            errors=(VmNotFound, InvalidState),
            resource="Metrics",
            http=HttpRoute("GET", f"{_VM}/metrics"),
        ),
        Operation(
            name="get_vm_attestation",
            title="Attestation of a confidential VM",
            summary=(
                "What QEMU reports about a running VM's memory encryption: for SEV and "
                "SEV-ES the platform state and launch measurement, for SNP the state; TDX "
                "and SNP reports come from inside the guest (the answer says so)."
            ),
            returns="{vm_id, memory_encryption, sev: {...}, sev_launch_measure: {...}}.",
            input=VmIdInput,
            handler=_vm_attestation,
            access=Access.TENANT,
            errors=(VmNotFound, InvalidState, NotConfidential),
            http=HttpRoute("GET", f"{_VM}/attestation"),
        ),
        Operation(
            name="query_vm_qmp",
            title="Read-only QMP query",
            summary="One read-only QMP query on a running VM (scripts' vm.qmp).",
            returns="{return: QEMU's answer}.",
            input=QmpInput,
            handler=_query_qmp,
            access=Access.TENANT,
            errors=(VmNotFound, InvalidState),
            tool=False,
            http=None,
        ),
        Operation(
            name="run_vm_script",
            title="Run a script on a VM",
            summary=(
                "Run a Rhai script in a sandbox on the server, bound to one VM: it can "
                "inspect and drive that VM through its host functions. Use it to do "
                "several steps in one call."
            ),
            returns="{result, result_type, output, duration_ms, operations}.",
            input=RunVmScriptInput,
            handler=_run_vm_script,
            access=Access.TENANT,
            mutates=True,
            audit_details=_script_audit,
            result=ScriptResponse,
            errors=(
                VmNotFound,
                UnsupportedLanguage,
                ScriptSyntaxError,
                ScriptRuntimeError,
                ScriptLimitExceeded,
            ),
            resource="Script",
            http=HttpRoute("POST", f"{_VM}/script", body=ScriptRequest),
        ),
    ]


def _guest() -> list[Operation]:
    exec_path = f"{_VM}/exec"
    return [
        Operation(
            name="exec_in_vm",
            title="Run a command in a VM",
            summary=(
                "Run a program inside a running VM through its guest agent (argv, no "
                "shell: use ['/bin/sh', '-c', '...'] for one). With wait (default) the "
                "answer has exit_code, stdout, stderr; with wait=false an exec_id comes "
                "back at once for long commands. wait_agent_s waits for the agent (and for "
                "a VM still starting) after a boot."
            ),
            returns="{exec_id, status, exit_code, stdout, stderr, duration_ms, ...}.",
            input=ExecInVmInput,
            handler=_exec_in_vm,
            access=Access.TENANT,
            mutates=True,
            audit_details=_exec_audit,
            result=ExecResult,
            errors=_GUEST_ERRORS,
            resource="CommandExecution",
            http=HttpRoute("POST", exec_path, body=ExecRequest, query=(_WAIT_AGENT,), also=(202,)),
        ),
        Operation(
            name="list_vm_execs",
            title="List commands run in a VM",
            summary="The commands run in a VM since the server started, newest last.",
            returns="{execs: [{exec_id, status, exit_code, ...}]}.",
            input=VmIdInput,
            handler=_list_execs,
            access=Access.TENANT,
            errors=(VmNotFound,),
            resource="CommandExecution",
            http=HttpRoute("GET", exec_path),
        ),
        Operation(
            name="get_vm_exec",
            title="A command's status",
            summary="One command's status and its output so far (for wait=false commands).",
            returns="{exec_id, status, exit_code, stdout, stderr, duration_ms, ...}.",
            input=ExecIdInput,
            handler=_get_exec,
            access=Access.TENANT,
            result=ExecResult,
            errors=(VmNotFound, ExecNotFound),
            resource="CommandExecution",
            http=HttpRoute("GET", f"{exec_path}/{{exec_id}}"),
        ),
        Operation(
            name="stream_vm_exec",
            title="Follow a command's output",
            summary="A command's output as server-sent events, then its exit.",
            returns="stdout/stderr events, then an exit event with the result.",
            input=ExecIdInput,
            handler=_stream_exec,
            access=Access.TENANT,
            errors=(VmNotFound, ExecNotFound),
            tool=False,
            resource="CommandExecution",
            http=HttpRoute("GET", f"{exec_path}/{{exec_id}}/stream", content="text/event-stream"),
        ),
        Operation(
            name="read_vm_file",
            title="Read a file in a VM",
            summary=(
                "Read a whole file inside a running VM through its guest agent: text when "
                "it is UTF-8, else base64 in content_b64."
            ),
            returns="{path, size, text, content_b64}.",
            input=ReadVmFileInput,
            handler=_read_vm_file,
            access=Access.TENANT,
            result=FileContent,
            errors=_FILE_ERRORS,
            resource="GuestFile",
            http=None,
        ),
        Operation(
            name="download_vm_file",
            title="Download a file from a VM",
            summary="A guest file's raw bytes, streamed.",
            returns="The file's bytes (X-Guest-File-Size has its size).",
            input=ReadVmFileInput,
            handler=_download_vm_file,
            access=Access.TENANT,
            errors=_FILE_ERRORS,
            tool=False,
            resource="GuestFile",
            http=HttpRoute(
                "GET",
                f"{_VM}/files",
                query=(_GUEST_PATH, _WAIT_AGENT),
                content="application/octet-stream",
            ),
        ),
        Operation(
            name="write_vm_file",
            title="Write a file in a VM",
            summary=(
                "Create or replace a file inside a running VM through its guest agent, "
                "from text (UTF-8) or content_b64."
            ),
            returns="{path, size}.",
            input=WriteVmFileInput,
            handler=_write_vm_file,
            access=Access.TENANT,
            mutates=True,
            audit_details=_write_audit,
            result=FileWritten,
            errors=_FILE_ERRORS,
            resource="GuestFile",
            http=None,
        ),
        Operation(
            name="upload_vm_file",
            title="Upload a file into a VM",
            summary="Create or replace a guest file from the raw request body.",
            returns="{path, size}.",
            input=UploadVmFileInput,
            handler=_upload_vm_file,
            access=Access.TENANT,
            mutates=True,
            audit_details=_upload_audit,
            result=FileWritten,
            errors=_FILE_ERRORS,
            tool=False,
            resource="GuestFile",
            http=HttpRoute("PUT", f"{_VM}/files", raw_body=True, query=(_GUEST_PATH, _WAIT_AGENT)),
        ),
        Operation(
            name="get_vm_console_log",
            title="A VM's serial console log",
            summary="The last lines the VM printed on its serial console (boot messages...).",
            returns="{vm_id, lines: [...]}.",
            input=ConsoleLogInput,
            handler=_console_log,
            access=Access.TENANT,
            errors=(VmNotFound,),
            http=HttpRoute(
                "GET",
                f"{_VM}/console/log",
                query=(QueryParam("tail", description="Only the last N lines (default 100)."),),
            ),
        ),
        Operation(
            name="open_vm_console",
            title="Interactive serial console",
            summary=(
                "The VM's serial port over a websocket: its output as binary frames, what "
                "you send typed in. One session at a time."
            ),
            returns="A websocket session.",
            input=ConsoleSessionInput,
            handler=_open_console,
            access=Access.TENANT,
            mutates=True,
            errors=(VmNotFound, InvalidState, ConsoleBusy),
            tool=False,
            http=HttpRoute(
                "GET", f"{_VM}/console", status=101, websocket=True, query=(_CONSOLE_TOKEN,)
            ),
        ),
        Operation(
            name="open_vm_display",
            title="Graphical console (VNC)",
            summary=(
                "The screen of a VM created with display.type vnc: the RFB protocol of its "
                "VNC server as binary websocket frames, for a VNC client such as noVNC."
            ),
            returns="A websocket session.",
            input=ConsoleSessionInput,
            handler=_open_display,
            access=Access.TENANT,
            mutates=True,
            errors=(VmNotFound, InvalidState),
            tool=False,
            http=HttpRoute(
                "GET", f"{_VM}/display", status=101, websocket=True, query=(_CONSOLE_TOKEN,)
            ),
        ),
        Operation(
            name="create_console_token",
            title="A console token for a browser",
            summary=(
                "A short-lived, single-use token opening this VM's serial console or "
                "display once: a browser passes it as ?token= on the websocket, which "
                "cannot carry an Authorization header."
            ),
            returns="{token, kind, expires_in}.",
            input=ConsoleTokenInput,
            handler=_console_token,
            access=Access.TENANT,
            mutates=True,
            audit_details=lambda args: {"kind": args.kind},
            result=ConsoleToken,
            errors=(VmNotFound,),
            tool=False,
            http=HttpRoute("POST", f"{_VM}/console/token", body=ConsoleTokenRequest),
        ),
    ]


def _server() -> list[Operation]:
    return [
        Operation(
            name="follow_events",
            title="Follow events",
            summary="Every change of your VMs as server-sent events; Last-Event-ID resumes.",
            returns="Server-sent events, one per VM change.",
            input=EventsInput,
            handler=_follow_events,
            access=Access.KEY,
            tool=False,
            resource="Event",
            tag="events",
            http=HttpRoute(
                "GET",
                "/api/v1/events",
                query=(
                    QueryParam("vm_id", description="Only this VM's events."),
                    QueryParam("after", description="Replay from after this event id."),
                ),
                headers=(QueryParam("Last-Event-ID", "after", "Resume after this event id."),),
                content="text/event-stream",
            ),
        ),
        Operation(
            name="list_images",
            title="List images",
            summary=(
                "List the images VMs can be created from (the 'image' of create_vm), and "
                "whether each is already on disk (others are downloaded on first use)."
            ),
            returns="{images: [{name, description, os, boot, available, ...}]}.",
            input=ListImagesInput,
            handler=_list_images,
            access=Access.KEY,
            idempotent=True,
            resource="Image",
            tag="images",
            http=HttpRoute("GET", "/api/v1/images"),
        ),
        Operation(
            name="get_host_capabilities",
            title="Host capabilities",
            summary=(
                "What this host can do before you ask for it: accelerator (KVM or TCG), "
                "CPUs, memory, QEMU version, and for uefi, secure_boot, vtpm, sev, sev_es, "
                "sev_snp, tdx, iommu and vfio whether each is available and why not. Call "
                "it before create_vm with security or gpu settings."
            ),
            returns="{qemu_version, accelerator, cpu_model, ..., capabilities: {name: "
            "{available, reason}}}.",
            input=HostCapabilitiesInput,
            handler=_host_capabilities,
            access=Access.KEY,
            result=HostCapabilities,
            errors=(HypervisorError,),
            idempotent=True,
            resource="HostCapabilities",
            tag="host",
            http=HttpRoute(
                "GET",
                "/api/v1/host",
                query=(QueryParam("refresh", description="Probe the host again first."),),
            ),
        ),
        Operation(
            name="list_host_devices",
            title="List host PCI devices",
            summary=(
                "List the host's PCI devices (GPUs, NICs, ...) with their IOMMU groups, "
                "whether each can be passed through to a VM and why not, who holds it (your "
                "VM's id, or 'another tenant'), and the vGPU types with free instances. Use "
                "it before create_vm with a gpu."
            ),
            returns="{devices: [...], iommu_groups, vgpu_types: [...]}.",
            input=NoInput,
            handler=_host_devices,
            access=Access.KEY,
            result=HostDevices,
            idempotent=True,
            resource="HostDevices",
            tag="host",
            http=HttpRoute("GET", "/api/v1/host/devices"),
        ),
        Operation(
            name="get_health",
            title="Server health",
            summary="Server status, version, uptime, accelerator, auth mode, QEMU's user.",
            returns="{status, version, uptime_seconds, accelerator, ...}.",
            input=NoInput,
            handler=_health,
            access=Access.PUBLIC,
            tool=False,
            tag="meta",
            http=HttpRoute("GET", "/health"),
        ),
        Operation(
            name="get_prometheus_metrics",
            title="Prometheus metrics",
            summary="Prometheus exposition of VMs, API and QMP figures (every tenant's).",
            returns="Prometheus text.",
            input=NoInput,
            handler=_prometheus,
            access=Access.ADMIN,
            tool=False,
            tag="meta",
            http=HttpRoute("GET", "/metrics", content="text/plain"),
        ),
    ]


def vm_operations() -> list[Operation]:
    """The operations on VMs, their guests, the host, images and the server itself."""
    return [*_vm_core(), *_guest(), *_server()]
