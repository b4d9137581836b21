"""The operations HyperMachine offers agents: one registry entry each.

Each handler calls the same :class:`~hypermachine.hypervisor.manager.Manager`
method the REST handler calls. To add an operation, write its input model in
:mod:`.inputs`, a short handler here, and one :class:`Operation` in
:func:`build_registry`.
"""

from __future__ import annotations

from typing import Any

from ..errors import (
    GuestAgentUnavailable,
    GuestOperationFailed,
    GuestPathNotFound,
    HypervisorError,
    ImageNotFound,
    InvalidState,
    NameTaken,
    NotConfidential,
    ScriptLimitExceeded,
    ScriptRuntimeError,
    ScriptSyntaxError,
    Unsupported,
    UnsupportedLanguage,
    VmNotFound,
    WaitTimeout,
)
from ..models import (
    CreateVmRequest,
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
from ..store import VmQuery
from .inputs import (
    DEFAULT_WAIT_S,
    DeleteVmInput,
    ExecInVmInput,
    HostCapabilitiesInput,
    ListImagesInput,
    ListVmsInput,
    NoInput,
    ReadVmFileInput,
    RunVmScriptInput,
    StartVmInput,
    StopVmInput,
    VmIdInput,
    WaitForVmInput,
    WriteVmFileInput,
)
from .registry import HttpRoute, Operation, QueryParam, Registry
from .snapshot_ops import snapshot_operations

__all__ = ["build_registry"]

_VM = "/api/v1/vms/{vm_id}"
_BOOL = {"type": "boolean"}
_SECONDS = {"type": "number", "exclusiveMinimum": 0, "maximum": 3600}


# -- handlers ---------------------------------------------------------------------


async def _list_vms(svc: Any, args: ListVmsInput) -> VmList:
    query = VmQuery(
        states=tuple(args.state or ()),
        name=args.name,
        labels=args.labels or {},
        limit=args.limit,
        cursor=args.cursor,
    )
    vms, cursor = svc.manager.list(query)
    return VmList(vms=vms, next_cursor=cursor)


async def _get_vm(svc: Any, args: VmIdInput) -> Vm:
    vm: Vm = svc.manager.get(args.vm_id)
    return vm


async def _create_vm(svc: Any, args: CreateVmRequest) -> Vm:
    created = await svc.manager.create(args)
    vm: Vm = created.vm
    if args.wait:
        target = VmState.RUNNING if args.start else VmState.STOPPED
        vm = await svc.manager.wait_for(vm.id, {target}, DEFAULT_WAIT_S)
    return vm


async def _delete_vm(svc: Any, args: DeleteVmInput) -> dict[str, Any]:
    await svc.manager.delete(args.vm_id, force=args.force)
    return {"deleted": True, "vm_id": args.vm_id}


async def _settle(svc: Any, vm: Vm, wait: bool, timeout_s: float, target: VmState) -> Vm:
    if not wait:
        return vm
    settled: Vm = await svc.manager.wait_for(vm.id, {target}, timeout_s)
    return settled


async def _start_vm(svc: Any, args: StartVmInput) -> Vm:
    vm = await svc.manager.start(args.vm_id)
    return await _settle(svc, vm, args.wait, args.timeout_s or DEFAULT_WAIT_S, VmState.RUNNING)


async def _stop_vm(svc: Any, args: StopVmInput) -> Vm:
    vm = await svc.manager.stop(args.vm_id, force=args.force, timeout_s=args.timeout_s)
    # The wait covers the ACPI grace period too, so give it room beyond that.
    wait_s = (args.timeout_s or svc.settings.stop_timeout_s) + DEFAULT_WAIT_S
    return await _settle(svc, vm, args.wait, wait_s, VmState.STOPPED)


async def _pause_vm(svc: Any, args: VmIdInput) -> Vm:
    vm: Vm = await svc.manager.pause(args.vm_id)
    return vm


async def _resume_vm(svc: Any, args: VmIdInput) -> Vm:
    vm: Vm = await svc.manager.resume(args.vm_id)
    return vm


async def _reboot_vm(svc: Any, args: VmIdInput) -> Vm:
    vm: Vm = await svc.manager.reboot(args.vm_id)
    return vm


async def _wait_for_vm(svc: Any, args: WaitForVmInput) -> Vm:
    vm: Vm = await svc.manager.wait_for(args.vm_id, {args.state}, args.timeout_s)
    return vm


async def _vm_metrics(svc: Any, args: VmIdInput) -> VmMetrics:
    metrics: VmMetrics = await svc.manager.metrics(args.vm_id)
    return metrics


async def _list_images(svc: Any, _args: ListImagesInput) -> dict[str, Any]:
    return {"images": [image.to_dict() for image in svc.catalogue.list()]}


async def _get_vm_attestation(svc: Any, args: VmIdInput) -> dict[str, object]:
    report: dict[str, object] = await svc.manager.attestation(args.vm_id)
    return report


async def _get_host_capabilities(svc: Any, args: HostCapabilitiesInput) -> HostCapabilities:
    caps: HostCapabilities = await svc.manager.host_capabilities(refresh=args.refresh)
    return caps


async def _list_host_devices(svc: Any, _args: NoInput) -> HostDevices:
    devices: HostDevices = await svc.manager.host_devices()
    return devices


async def _run_vm_script(svc: Any, args: RunVmScriptInput) -> ScriptResponse:
    request = ScriptRequest.model_validate(args.model_dump(exclude={"vm_id"}))
    response: ScriptResponse = await svc.scripts.run(request, vm_id=args.vm_id)
    return response


async def _exec_in_vm(svc: Any, args: ExecInVmInput) -> ExecResult:
    request = ExecRequest.model_validate(args.model_dump(exclude={"vm_id", "wait_agent_s"}))
    result: ExecResult = await svc.manager.guest.exec(
        args.vm_id, request, wait_agent_s=args.wait_agent_s
    )
    return result


async def _read_vm_file(svc: Any, args: ReadVmFileInput) -> FileContent:
    request = FileReadRequest(path=args.path)
    content: FileContent = await svc.manager.guest.read_file(
        args.vm_id, request, wait_agent_s=args.wait_agent_s
    )
    return content


async def _write_vm_file(svc: Any, args: WriteVmFileInput) -> FileWritten:
    request = FileWriteRequest.model_validate(args.model_dump(exclude={"vm_id", "wait_agent_s"}))
    written: FileWritten = await svc.manager.guest.write_file(
        args.vm_id, request, wait_agent_s=args.wait_agent_s
    )
    return written


# -- the registry -----------------------------------------------------------------

_WAIT_QUERY = (
    QueryParam("wait", _BOOL, "Return only once the VM reached the target state."),
    QueryParam("timeout", _SECONDS, "With wait: give up after this many seconds (default 60)."),
)


def _lifecycle(
    name: str, verb: str, summary: str, *, body: type[Any] = LifecycleRequest, **kw: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "input": VmIdInput,
        "result": Vm,
        "errors": (VmNotFound, InvalidState, HypervisorError),
        "summary": summary,
        "http": HttpRoute("POST", f"{_VM}/{verb}", body=body, body_optional=True),
        **kw,
    }


def build_registry() -> Registry:
    """Every operation HyperMachine offers agents, in the order tools are listed."""
    vm_returns = "the VM object (id, name, state, state_reason, spec, pid, timestamps)."
    return Registry(
        [
            Operation(
                name="list_vms",
                title="List VMs",
                summary=(
                    "List the virtual machines on this host, newest first, optionally filtered "
                    "by state, name or labels. Use it to find a VM's id or to see what exists."
                ),
                returns="{vms: [VM objects], next_cursor}; pass next_cursor back for more.",
                input=ListVmsInput,
                handler=_list_vms,
                result=VmList,
                read_only=True,
                idempotent=True,
                http=HttpRoute(
                    "GET",
                    "/api/v1/vms",
                    query=(
                        QueryParam(
                            "state",
                            {"type": "array", "items": {"enum": [s.value for s in VmState]}},
                            "Only these states (repeat, or separate with commas).",
                            repeated=True,
                        ),
                        QueryParam("name", {"type": "string"}, "Only the VM with this name."),
                        QueryParam(
                            "label",
                            {"type": "array", "items": {"type": "string"}},
                            "key=value; repeat for several labels (all must match).",
                            repeated=True,
                        ),
                        QueryParam(
                            "limit",
                            {"type": "integer", "minimum": 1, "maximum": 500},
                            "Page size (default 100).",
                        ),
                        QueryParam("cursor", {"type": "string"}, "next_cursor of the last page."),
                    ),
                ),
            ),
            Operation(
                name="get_vm",
                title="Get a VM",
                summary="Read one VM: its spec, current state (and why), pid and timestamps.",
                returns=vm_returns,
                input=VmIdInput,
                handler=_get_vm,
                result=Vm,
                errors=(VmNotFound,),
                read_only=True,
                idempotent=True,
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
                returns=vm_returns,
                input=CreateVmRequest,
                handler=_create_vm,
                result=Vm,
                errors=(ImageNotFound, NameTaken, Unsupported, InvalidState, WaitTimeout),
                http=HttpRoute(
                    "POST",
                    "/api/v1/vms",
                    status=201,
                    body=CreateVmRequest,
                    headers=(
                        QueryParam(
                            "Idempotency-Key",
                            {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"},
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
                errors=(VmNotFound, InvalidState),
                destructive=True,
                http=HttpRoute(
                    "DELETE",
                    _VM,
                    status=204,
                    query=(QueryParam("force", _BOOL, "Kill a live VM first."),),
                ),
            ),
            Operation(
                name="start_vm",
                title="Start a VM",
                summary=(
                    "Boot a stopped (or failed) VM. Returns at once with state 'starting'; "
                    "with wait=true it returns once QEMU reports 'running'. The guest OS may "
                    "need more seconds to be usable."
                ),
                returns=vm_returns,
                input=StartVmInput,
                handler=_start_vm,
                result=Vm,
                errors=(VmNotFound, InvalidState, ImageNotFound, WaitTimeout, HypervisorError),
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
                returns=vm_returns,
                input=StopVmInput,
                handler=_stop_vm,
                result=Vm,
                errors=(VmNotFound, InvalidState, WaitTimeout, HypervisorError),
                http=HttpRoute(
                    "POST",
                    f"{_VM}/stop",
                    body=StopRequest,
                    body_optional=True,
                    query=(*_WAIT_QUERY, QueryParam("force", _BOOL, "Quit QEMU at once.")),
                    also=(202,),
                ),
            ),
            Operation(
                **_lifecycle(
                    "pause_vm",
                    "pause",
                    "Freeze a running VM's vCPUs (memory stays; resume_vm continues it).",
                    title="Pause a VM",
                    returns=vm_returns + " State 'paused'.",
                    handler=_pause_vm,
                    idempotent=False,
                ),
            ),
            Operation(
                **_lifecycle(
                    "resume_vm",
                    "resume",
                    "Let a paused VM run again.",
                    title="Resume a VM",
                    returns=vm_returns + " State 'running'.",
                    handler=_resume_vm,
                ),
            ),
            Operation(
                **_lifecycle(
                    "reboot_vm",
                    "reboot",
                    "Hard-reset a running VM (like the reset button); it stays 'running'.",
                    title="Reboot a VM",
                    returns=vm_returns,
                    handler=_reboot_vm,
                ),
            ),
            Operation(
                name="wait_for_vm",
                title="Wait for a VM state",
                summary=(
                    "Block until a VM reaches a state (e.g. 'running' after start_vm, "
                    "'stopped' after stop_vm), for at most timeout_s seconds."
                ),
                returns=vm_returns,
                input=WaitForVmInput,
                handler=_wait_for_vm,
                result=Vm,
                errors=(VmNotFound, WaitTimeout, InvalidState),
                read_only=True,
                idempotent=True,
                http=HttpRoute(
                    "GET",
                    f"{_VM}/wait",
                    query=(
                        QueryParam(
                            "state",
                            {"type": "array", "items": {"enum": [s.value for s in VmState]}},
                            "The state(s) to wait for.",
                            required=True,
                            repeated=True,
                        ),
                        QueryParam("timeout", _SECONDS, "Give up after this many seconds."),
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
                result=VmMetrics,
                errors=(VmNotFound, InvalidState),
                read_only=True,
                resource="Metrics",
                http=HttpRoute("GET", f"{_VM}/metrics"),
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
                read_only=True,
                idempotent=True,
                resource="Image",
                http=HttpRoute("GET", "/api/v1/images"),
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
                handler=_get_vm_attestation,
                errors=(VmNotFound, InvalidState, NotConfidential),
                read_only=True,
                http=HttpRoute("GET", f"{_VM}/attestation"),
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
                handler=_get_host_capabilities,
                result=HostCapabilities,
                errors=(HypervisorError,),
                read_only=True,
                idempotent=True,
                resource="HostCapabilities",
                http=HttpRoute(
                    "GET",
                    "/api/v1/host",
                    query=(QueryParam("refresh", _BOOL, "Probe the host again first."),),
                ),
            ),
            Operation(
                name="list_host_devices",
                title="List host PCI devices",
                summary=(
                    "List the host's PCI devices (GPUs, NICs, ...) with their IOMMU groups, "
                    "whether each can be passed through to a VM and why not, and the vGPU "
                    "types with free instances. Use it before create_vm with a gpu."
                ),
                returns="{devices: [...], iommu_groups, vgpu_types: [...]}.",
                input=NoInput,
                handler=_list_host_devices,
                result=HostDevices,
                read_only=True,
                idempotent=True,
                resource="HostDevices",
                http=HttpRoute("GET", "/api/v1/host/devices"),
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
            Operation(
                name="exec_in_vm",
                title="Run a command in a VM",
                summary=(
                    "Run a program inside a running VM through its guest agent (argv, no "
                    "shell: use ['/bin/sh', '-c', '...'] for one). With wait (default) the "
                    "answer has exit_code, stdout, stderr; with wait=false an exec_id comes "
                    "back at once for long commands. wait_agent_s waits for the agent after a "
                    "boot."
                ),
                returns="{exec_id, status, exit_code, stdout, stderr, duration_ms, ...}.",
                input=ExecInVmInput,
                handler=_exec_in_vm,
                result=ExecResult,
                errors=(VmNotFound, InvalidState, GuestAgentUnavailable, GuestOperationFailed),
                resource="CommandExecution",
                http=HttpRoute("POST", f"{_VM}/exec", body=ExecRequest, also=(202,)),
            ),
            Operation(
                name="read_vm_file",
                title="Read a file in a VM",
                summary=(
                    "Read a whole file inside a running VM through its guest agent: text when "
                    "it is UTF-8, else base64 in content_b64. (REST streams raw bytes from "
                    "GET /api/v1/vms/{vm_id}/files?path=...)"
                ),
                returns="{path, size, text, content_b64}.",
                input=ReadVmFileInput,
                handler=_read_vm_file,
                result=FileContent,
                errors=(VmNotFound, InvalidState, GuestAgentUnavailable, GuestPathNotFound),
                read_only=True,
                resource="GuestFile",
                http=None,
            ),
            Operation(
                name="write_vm_file",
                title="Write a file in a VM",
                summary=(
                    "Create or replace a file inside a running VM through its guest agent, "
                    "from text (UTF-8) or content_b64. (REST takes raw bytes with "
                    "PUT /api/v1/vms/{vm_id}/files?path=...)"
                ),
                returns="{path, size}.",
                input=WriteVmFileInput,
                handler=_write_vm_file,
                result=FileWritten,
                errors=(VmNotFound, InvalidState, GuestAgentUnavailable, GuestOperationFailed),
                resource="GuestFile",
                http=None,
            ),
            *snapshot_operations(),
        ]
    )
