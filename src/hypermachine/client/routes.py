"""Every REST call the SDK makes, as data: method, path, query, body and how to read the answer.

No I/O here. ``Client`` and ``AsyncClient`` both send these :class:`Call` objects,
so each route of the API is described once, whichever client sends it.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from ..models import (
    CreateFromSnapshotRequest,
    CreateVmRequest,
    Event,
    ExecOutput,
    ExecRequest,
    ExecResult,
    FileWritten,
    ForkRequest,
    ForkResult,
    HostCapabilities,
    ImageInfo,
    LifecycleRequest,
    RestoreRequest,
    ScriptRequest,
    ScriptResponse,
    Snapshot,
    SnapshotList,
    SnapshotRef,
    SnapshotRequest,
    Vm,
    VmList,
    VmMetrics,
    VmState,
)

__all__ = ["Call", "SnapshotSource", "Stream", "exec_piece", "parse_event"]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

API = "/api/v1"
# Seconds the HTTP read may take beyond what the server was asked to wait for.
_MARGIN_S = 30.0
_SERVER_WAIT_S = 60.0  # what the server waits on create/start/stop with wait=true
_EXEC_DEFAULT_S = 300.0  # the server's default exec timeout
_SNAPSHOT_WAIT_S = 300.0  # the server's snapshot_timeout_s: writing or loading saved RAM


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to turn its (successful) response into ``T``."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: list[tuple[str, str]] = field(default_factory=list)
    json: dict[str, Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = False  # safe to send again after a connection reset
    read_timeout: float | None = None  # the server may take this long to answer


@dataclass(frozen=True)
class Stream:
    """A server-sent event stream to open with GET."""

    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate_json(response.content)


def _nothing(response: httpx.Response) -> None:
    return None


def _content(response: httpx.Response) -> bytes:
    return response.content


def segment(text: str) -> str:
    """``text`` as one path segment, whatever it holds.

    ``/`` is escaped, and so are the segments ``.`` and ``..``, which an HTTP client
    resolves before sending (``snapshots/..`` would be the VM itself: a DELETE of it
    would delete the VM).

    Raises:
        ValueError: ``text`` is empty (the path would name the collection).
    """
    if not text:
        raise ValueError("an empty name or id")
    quoted = quote(text, safe="")
    return quoted.replace(".", "%2E") if not quoted.strip(".") else quoted


def vm_path(vm_id: str, *rest: str) -> str:
    return "/".join([f"{API}/vms", segment(vm_id), *rest])


def _wait_agent(wait_agent: float | None) -> list[tuple[str, str]]:
    return [("wait_agent", f"{wait_agent:g}")] if wait_agent else []


# -- VMs -------------------------------------------------------------------------


SnapshotSource = tuple[str, str] | Snapshot
"""A snapshot to make a VM from: ``(vm_id, snapshot_name)`` or a :class:`Snapshot`."""


def new_vm(
    name: str,
    image: str | None,
    *,
    start: bool,
    wait: bool,
    from_snapshot: SnapshotSource | None,
    idempotency_key: str | None,
    spec: dict[str, Any],
) -> Call[Vm]:
    """``client.vms.create``'s request: from an image (with an ``Idempotency-Key``, a
    fresh one unless given) or from a snapshot; validated before anything is sent.

    Raises:
        ValueError: neither or both of ``image`` and ``from_snapshot``; an
            ``idempotency_key`` with ``from_snapshot``.
        pydantic.ValidationError: a field the request does not have or a bad value.
    """
    if (image is None) == (from_snapshot is None):
        raise ValueError("give image= (a catalogue image) or from_snapshot=, not both")
    if image is not None:
        request = CreateVmRequest(name=name, image=image, start=start, wait=wait, **spec)
        return create_vm(request, idempotency_key or uuid.uuid4().hex)
    if idempotency_key is not None:
        raise ValueError("the server keeps no Idempotency-Key for a VM made from a snapshot")
    assert from_snapshot is not None
    vm_id, snapshot = (
        (from_snapshot.vm_id, from_snapshot.name)
        if isinstance(from_snapshot, Snapshot)
        else from_snapshot
    )
    ref = SnapshotRef(vm_id=vm_id, snapshot=snapshot)
    # Only labels may come in spec: the model refuses anything else (the parent's spec).
    template = CreateFromSnapshotRequest(
        name=name, from_snapshot=ref, start=start, wait=wait, **spec
    )
    return create_vm_from_snapshot(template)


def create_vm(request: CreateVmRequest, idempotency_key: str | None) -> Call[Vm]:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return Call(
        "POST",
        f"{API}/vms",
        _model(Vm),
        json=request.model_dump(mode="json", exclude_unset=True),
        headers=headers,
        idempotent=idempotency_key is not None,  # the server replays a repeated key
        read_timeout=_SERVER_WAIT_S + _MARGIN_S if request.wait else None,
    )


def create_vm_from_snapshot(request: CreateFromSnapshotRequest) -> Call[Vm]:
    """Not idempotent: the server honours no Idempotency-Key for this body."""
    return Call(
        "POST",
        f"{API}/vms",
        _model(Vm),
        json=request.model_dump(mode="json"),
        read_timeout=_SNAPSHOT_WAIT_S + _SERVER_WAIT_S + _MARGIN_S if request.wait else None,
    )


def list_vms(
    *,
    states: Iterable[VmState | str] = (),
    labels: dict[str, str] | None = None,
    name: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[VmList]:
    params = [("state", VmState(s).value) for s in states]
    params += [("label", f"{k}={v}") for k, v in (labels or {}).items()]
    params += [(k, str(v)) for k, v in (("name", name), ("limit", limit), ("cursor", cursor)) if v]
    return Call("GET", f"{API}/vms", _model(VmList), params=params, idempotent=True)


def get_vm(vm_id: str) -> Call[Vm]:
    return Call("GET", vm_path(vm_id), _model(Vm), idempotent=True)


def delete_vm(vm_id: str, *, force: bool) -> Call[None]:
    params = [("force", "true")] if force else []
    return Call("DELETE", vm_path(vm_id), _nothing, params=params, idempotent=True)


def lifecycle(vm_id: str, action: str, body: LifecycleRequest) -> Call[Vm]:
    """start, stop, pause, resume or reboot (a stop waits out its grace, then 60 s more)."""
    waits_for = (body.timeout_s or _SERVER_WAIT_S) + _SERVER_WAIT_S
    return Call(
        "POST",
        vm_path(vm_id, action),
        _model(Vm),
        json=body.model_dump(mode="json", exclude_defaults=True),
        read_timeout=waits_for + _MARGIN_S if body.wait else None,
    )


def wait_vm(vm_id: str, states: Iterable[VmState | str], timeout: float) -> Call[Vm]:
    params = [("state", VmState(s).value) for s in states] + [("timeout", f"{timeout:g}")]
    return Call(
        "GET", vm_path(vm_id, "wait"), _model(Vm), params=params, idempotent=True,
        read_timeout=timeout + _MARGIN_S,
    )  # fmt: skip


def vm_metrics(vm_id: str) -> Call[VmMetrics]:
    return Call("GET", vm_path(vm_id, "metrics"), _model(VmMetrics), idempotent=True)


def console_log(vm_id: str, tail: int) -> Call[list[str]]:
    def lines(response: httpx.Response) -> list[str]:
        return [str(line) for line in json.loads(response.content)["lines"]]

    return Call(
        "GET", vm_path(vm_id, "console", "log"), lines, params=[("tail", str(tail))],
        idempotent=True,
    )  # fmt: skip


def console_path(vm_id: str) -> str:
    return vm_path(vm_id, "console")


# -- snapshots, restore, fork, hibernate (docs/snapshots.md) ---------------------------


def snapshot_path(vm_id: str, name: str, *rest: str) -> str:
    return vm_path(vm_id, "snapshots", segment(name), *rest)


def take_snapshot(vm_id: str, request: SnapshotRequest) -> Call[Snapshot]:
    return Call(
        "POST",
        vm_path(vm_id, "snapshots"),
        _model(Snapshot),
        json=request.model_dump(mode="json", exclude_defaults=True),
        read_timeout=_SNAPSHOT_WAIT_S + _MARGIN_S if request.wait else None,
    )


def list_snapshots(vm_id: str) -> Call[list[Snapshot]]:
    def snapshots(response: httpx.Response) -> list[Snapshot]:
        return SnapshotList.model_validate_json(response.content).snapshots

    return Call("GET", vm_path(vm_id, "snapshots"), snapshots, idempotent=True)


def get_snapshot(vm_id: str, name: str) -> Call[Snapshot]:
    return Call("GET", snapshot_path(vm_id, name), _model(Snapshot), idempotent=True)


def delete_snapshot(vm_id: str, name: str) -> Call[None]:
    return Call("DELETE", snapshot_path(vm_id, name), _nothing, idempotent=True)


def restore_snapshot(vm_id: str, name: str, request: RestoreRequest) -> Call[Vm]:
    """Not idempotent: a second restore would throw away what ran since the first."""
    return Call(
        "POST",
        snapshot_path(vm_id, name, "restore"),
        _model(Vm),
        json=request.model_dump(mode="json", exclude_defaults=True),
        read_timeout=_SNAPSHOT_WAIT_S * (2 if request.wait else 1) + _MARGIN_S,
    )


def fork_request(
    name: str,
    snapshot: str | None,
    count: int,
    wait: bool,
    timeout: float | None,
    ports: Literal["remap", "refuse"],
    ips: list[str] | None,
) -> ForkRequest:
    return ForkRequest(
        name=name, snapshot=snapshot, count=count, wait=wait, timeout_s=timeout, ports=ports,
        ips=ips,
    )  # fmt: skip


def fork_vm(vm_id: str, request: ForkRequest) -> Call[list[Vm]]:
    """Not idempotent: the server honours no Idempotency-Key for a fork."""

    def children(response: httpx.Response) -> list[Vm]:
        return ForkResult.model_validate_json(response.content).vms

    waits_for = (request.timeout_s or _SNAPSHOT_WAIT_S) if request.wait else 0.0
    return Call(
        "POST",
        vm_path(vm_id, "fork"),
        children,
        json=request.model_dump(mode="json", exclude_defaults=True),
        read_timeout=_SNAPSHOT_WAIT_S + waits_for + _MARGIN_S,
    )


def hibernate(vm_id: str) -> Call[Vm]:
    """The server answers once the RAM is on disk and QEMU has ended."""
    return Call(
        "POST", vm_path(vm_id, "hibernate"), _model(Vm), json={},
        read_timeout=_SNAPSHOT_WAIT_S + _MARGIN_S,
    )  # fmt: skip


# -- the guest: exec, files, scripts ------------------------------------------------


def exec_request(
    argv: list[str],
    *,
    timeout: float | None = None,
    stdin: str | bytes | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> ExecRequest:
    """The body of an exec; bytes on stdin travel as base64."""
    binary = stdin if isinstance(stdin, bytes) else None
    return ExecRequest(
        command=argv,
        env=env or {},
        stdin=stdin if isinstance(stdin, str) else None,
        stdin_b64=base64.b64encode(binary).decode() if binary is not None else None,
        timeout_s=timeout,
        wait=wait,
    )


def run_exec(vm_id: str, request: ExecRequest, wait_agent: float | None) -> Call[ExecResult]:
    runs_for = (request.timeout_s or _EXEC_DEFAULT_S) if request.wait else 0.0
    return Call(
        "POST",
        vm_path(vm_id, "exec"),
        _model(ExecResult),
        params=_wait_agent(wait_agent),
        json=request.model_dump(mode="json", exclude_defaults=True),
        read_timeout=runs_for + (wait_agent or 0.0) + _MARGIN_S,
    )


def exec_stream(vm_id: str, exec_id: str) -> Stream:
    return Stream(vm_path(vm_id, "exec", segment(exec_id), "stream"))


def exec_piece(event: str, data: str) -> ExecOutput | ExecResult:
    """One message of an exec stream: a piece of output, or (``exit``) the result."""
    if event == "exit":
        return ExecResult.model_validate_json(data)
    return ExecOutput.model_validate_json(data)


def read_file(vm_id: str, path: str, wait_agent: float | None) -> Call[bytes]:
    params = [("path", path), *_wait_agent(wait_agent)]
    return Call("GET", vm_path(vm_id, "files"), _content, params=params, idempotent=True)


def write_file(
    vm_id: str, path: str, data: bytes | str, wait_agent: float | None
) -> Call[FileWritten]:
    content = data.encode() if isinstance(data, str) else data
    return Call(
        "PUT",
        vm_path(vm_id, "files"),
        _model(FileWritten),
        params=[("path", path), *_wait_agent(wait_agent)],
        content=content,
        headers={"Content-Type": "application/octet-stream"},
        idempotent=True,
    )


def run_script(vm_id: str, request: ScriptRequest) -> Call[ScriptResponse]:
    return Call(
        "POST",
        vm_path(vm_id, "script"),
        _model(ScriptResponse),
        json=request.model_dump(mode="json", exclude_none=True),
        read_timeout=_EXEC_DEFAULT_S,
    )


# -- the host and the event log ------------------------------------------------------

_IMAGES = TypeAdapter(list[ImageInfo])


def list_images() -> Call[list[ImageInfo]]:
    def images(response: httpx.Response) -> list[ImageInfo]:
        return _IMAGES.validate_python(json.loads(response.content)["images"])

    return Call("GET", f"{API}/images", images, idempotent=True)


def host(refresh: bool) -> Call[HostCapabilities]:
    params = [("refresh", "true")] if refresh else []
    return Call("GET", f"{API}/host", _model(HostCapabilities), params=params, idempotent=True)


def events(vm_id: str | None, after: int | None) -> Stream:
    """The event log from after ``after`` (only new events when None)."""
    params = [("vm_id", vm_id)] if vm_id else []
    headers = {"Last-Event-ID": str(after)} if after is not None else {}
    return Stream(f"{API}/events", params=params, headers=headers)


def parse_event(data: str) -> Event:
    return Event.model_validate_json(data)
