"""``Client``: the SDK for ordinary (blocking) code."""

from __future__ import annotations

import queue
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import httpx
from httpx_sse import connect_sse
from httpx_ws import WebSocketDisconnect, WebSocketSession, WebSocketUpgradeError, connect_ws

from ..errors import VmNotFound
from ..models import (
    Event,
    ExecOutput,
    ExecResult,
    FileWritten,
    HostCapabilities,
    ImageInfo,
    LifecycleRequest,
    RestoreRequest,
    ScriptRequest,
    ScriptResponse,
    Snapshot,
    SnapshotRequest,
    StopRequest,
    Vm,
    VmMetrics,
    VmState,
)
from . import routes
from .base import BaseClient, VmHandleBase, frame_bytes, read_error_body
from .errors import error_from_response

__all__ = ["Client", "ConsoleSession", "Files", "Images", "Snapshots", "VmHandle", "Vms"]

T = TypeVar("T")


class Client(BaseClient):
    """A HyperMachine server, for blocking code. Use it as a context manager (or ``close()``).

    ``client.vms`` makes and finds VMs, ``client.images`` lists the catalogue,
    ``client.host()`` says what the host can do and ``client.events()`` follows the
    event log. Arguments: see :class:`~hypermachine.client.base.BaseClient`;
    ``transport`` is handed to httpx (tests, proxies).
    """

    def __init__(
        self,
        server: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        **options: Any,
    ) -> None:
        super().__init__(server, api_key, **options)
        self._http = httpx.Client(
            **self._http_options(), transport=transport, event_hooks={"response": [read_error_body]}
        )
        self.vms = Vms(self)
        self.images = Images(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: routes.Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = self._http.send(self._request(self._http, call))
            except httpx.TransportError as err:
                delay = self._retry_delay(call, attempt, error=err)
                if delay is None:
                    raise
            else:
                delay = self._retry_delay(call, attempt, response=response)
                if delay is None:
                    return self._result(call, response)
            time.sleep(delay)
            attempt += 1

    def _sse(self, stream: routes.Stream, idle: float | None = None) -> Iterator[tuple[str, str]]:
        """(event, data) of each message of a stream, until the server ends it."""
        options = self._stream_options(stream, idle)
        with connect_sse(self._http, "GET", stream.path, **options) as source:
            self._check_stream(source.response)
            for message in source.iter_sse():
                yield message.event, message.data

    def host(self, *, refresh: bool = False) -> HostCapabilities:
        """What the host can run (``refresh`` probes again)."""
        return self._run(routes.host(refresh))

    def events(
        self,
        *,
        vm_id: str | None = None,
        after: int | None = None,
        follow: bool = True,
        quiet: float = 1.0,
    ) -> Generator[Event, None, None]:
        """The event log: events after id ``after`` (None: only new ones), as they happen.

        A broken stream is re-opened with ``Last-Event-ID`` so no event is lost or
        repeated. ``follow=False`` ends once the stream has been ``quiet`` seconds
        without an event (to read what was logged so far, pass ``after=0``). ``close()``
        ends the stream.
        """
        failures = 0
        while True:
            try:
                for _, data in self._sse(routes.events(vm_id, after), None if follow else quiet):
                    event = routes.parse_event(data)
                    after, failures = event.id, 0
                    yield event
            except httpx.TransportError as err:
                if not follow and isinstance(err, httpx.ReadTimeout):
                    return
                delay = self._reconnect_delay(failures)
                if delay is None:
                    raise
                failures += 1
                time.sleep(delay)


class Images:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> list[ImageInfo]:
        """The catalogue, with what is on disk."""
        return self._client._run(routes.list_images())


class Vms:
    """``client.vms``: create, list and find VMs."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        *,
        name: str,
        image: str | None = None,
        start: bool = False,
        wait: bool = False,
        from_snapshot: routes.SnapshotSource | None = None,
        idempotency_key: str | None = None,
        **spec: Any,
    ) -> VmHandle:
        """A new VM; ``spec`` takes the other fields of :class:`~hypermachine.models.VmSpec`
        (cpus, memory_mb, disk_gb, labels, network, …), validated before sending.

        An ``Idempotency-Key`` is sent (a fresh one unless given), so a retried create
        never makes two VMs. ``start`` boots it; ``wait`` returns once it has settled.

        ``from_snapshot=(vm_id, name)`` (or a :class:`Snapshot`) makes it from a snapshot
        instead, with the parent's spec (only ``labels`` may be given): ``hibernated``
        until started, or resumed at once with ``start``. The server keeps no idempotency
        key for it, so it is not resent after a connection reset.
        """
        call = routes.new_vm(
            name, image, start=start, wait=wait, from_snapshot=from_snapshot,
            idempotency_key=idempotency_key, spec=spec,
        )  # fmt: skip
        return VmHandle(self._client, self._client._run(call))

    def list(
        self,
        *,
        state: list[VmState | str] | None = None,
        labels: dict[str, str] | None = None,
        name: str | None = None,
        page_size: int = 100,
    ) -> Iterator[VmHandle]:
        """Every VM matching the filters, fetching pages (``page_size`` each) as needed."""
        cursor: str | None = None
        while True:
            page = self._client._run(
                routes.list_vms(
                    states=state or (), labels=labels, name=name, limit=page_size, cursor=cursor
                )
            )
            for vm in page.vms:
                yield VmHandle(self._client, vm)
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def get(self, vm: str) -> VmHandle:
        """The VM with this id, or else with this name. Raises VmNotFound."""
        try:
            return VmHandle(self._client, self._client._run(routes.get_vm(vm)))
        except VmNotFound:
            page = self._client._run(routes.list_vms(name=vm, limit=1))
            if not page.vms:
                raise
            return VmHandle(self._client, page.vms[0])


class VmHandle(VmHandleBase):
    """One VM: lifecycle, guest commands and files, console, scripts, metrics."""

    def __init__(self, client: Client, info: Vm) -> None:
        super().__init__(info)
        self._client = client
        self.files = Files(client, self)
        self.snapshots = Snapshots(client, self)

    def refresh(self) -> Vm:
        return self._update(self._client._run(routes.get_vm(self.id)))

    def start(self, *, wait: bool = False, timeout: float | None = None) -> Vm:
        """Launch QEMU; ``wait`` returns once it runs."""
        body = LifecycleRequest(wait=wait, timeout_s=timeout)
        return self._update(self._client._run(routes.lifecycle(self.id, "start", body)))

    def stop(self, *, force: bool = False, wait: bool = False, timeout: float | None = None) -> Vm:
        """ACPI power-down (QEMU is quit after ``timeout`` s); ``force`` quits at once."""
        body = StopRequest(force=force, wait=wait, timeout_s=timeout)
        return self._update(self._client._run(routes.lifecycle(self.id, "stop", body)))

    def pause(self) -> Vm:
        return self._update(self._client._run(routes.lifecycle(self.id, "pause", _NOW)))

    def resume(self) -> Vm:
        return self._update(self._client._run(routes.lifecycle(self.id, "resume", _NOW)))

    def reboot(self) -> Vm:
        return self._update(self._client._run(routes.lifecycle(self.id, "reboot", _NOW)))

    def delete(self, *, force: bool = False) -> None:
        """Remove the VM and its disk (returns once it is gone); ``force`` for a live one."""
        self._client._run(routes.delete_vm(self.id, force=force))

    def wait_for(self, state: VmState | str, timeout: float = 60.0) -> Vm:
        """Block until the VM is in ``state``. Raises WaitTimeout."""
        return self._update(self._client._run(routes.wait_vm(self.id, [state], timeout)))

    def metrics(self) -> VmMetrics:
        return self._client._run(routes.vm_metrics(self.id))

    def fork(
        self,
        name: str,
        *,
        snapshot: str | None = None,
        count: int = 1,
        wait: bool = False,
        timeout: float | None = None,
        ports: Literal["remap", "refuse"] = "remap",
        ips: list[str] | None = None,
    ) -> list[VmHandle]:
        """``count`` new VMs carrying on from this one's memory: the memory snapshot
        ``snapshot``, or an instant one (the VM must then be running or paused). They are
        named ``name`` (``name-1``, ``name-2``, … when ``count`` > 1); ``wait`` returns
        once each runs. Not resent after a connection reset (no idempotency key)."""
        request = routes.fork_request(name, snapshot, count, wait, timeout, ports, ips)
        children = self._client._run(routes.fork_vm(self.id, request))
        return [VmHandle(self._client, vm) for vm in children]

    def hibernate(self) -> Vm:
        """Save RAM to disk and end QEMU; returns once the VM is ``hibernated``.
        ``start()`` resumes it where it was, ``stop()`` discards the saved RAM."""
        return self._update(self._client._run(routes.hibernate(self.id)))

    def exec(
        self,
        argv: list[str],
        *,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        env: dict[str, str] | None = None,
        wait_agent: float | None = None,
    ) -> ExecResult:
        """Run ``argv`` in the guest and return once it ended (``wait_agent``: seconds to
        wait for the guest agent to come up)."""
        request = routes.exec_request(argv, timeout=timeout, stdin=stdin, env=env)
        return self._client._run(routes.run_exec(self.id, request, wait_agent))

    def exec_stream(
        self,
        argv: list[str],
        *,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        env: dict[str, str] | None = None,
        wait_agent: float | None = None,
    ) -> Iterator[ExecOutput | ExecResult]:
        """Run ``argv`` and yield its output as it comes, then (last) its result."""
        request = routes.exec_request(argv, timeout=timeout, stdin=stdin, env=env, wait=False)
        started = self._client._run(routes.run_exec(self.id, request, wait_agent))
        for event, data in self._client._sse(routes.exec_stream(self.id, started.exec_id)):
            yield routes.exec_piece(event, data)

    def logs(self, tail: int = 100) -> list[str]:
        """The last ``tail`` lines of the serial console."""
        return self._client._run(routes.console_log(self.id, tail))

    @contextmanager
    def console(self) -> Iterator[ConsoleSession]:
        """The interactive serial console (one client at a time). Raises ConsoleBusy."""
        try:
            with connect_ws(routes.console_path(self.id), self._client._http) as ws:  # type: ignore[var-annotated]
                yield ConsoleSession(ws)
        except WebSocketUpgradeError as err:
            raise error_from_response(err.response) from None

    def script(
        self,
        code: str,
        args: dict[str, Any] | None = None,
        *,
        limits: dict[str, int] | None = None,
    ) -> ScriptResponse:
        """Run a Rhai script on the server with ``vm`` bound to this VM."""
        request = ScriptRequest(code=code, args=args, limits=limits)
        return self._client._run(routes.run_script(self.id, request))


_NOW = LifecycleRequest()


class Files:
    """``vm.files``: read and write guest files (through the guest agent)."""

    def __init__(self, client: Client, vm: VmHandle) -> None:
        self._client, self._vm = client, vm

    def read(self, path: str, *, wait_agent: float | None = None) -> bytes:
        return self._client._run(routes.read_file(self._vm.id, path, wait_agent))

    def write(
        self, path: str, data: bytes | str, *, wait_agent: float | None = None
    ) -> FileWritten:
        """Write ``data`` (text as UTF-8) to ``path``, replacing the file."""
        return self._client._run(routes.write_file(self._vm.id, path, data, wait_agent))


class Snapshots:
    """``vm.snapshots``: take, list, read, delete and restore this VM's snapshots."""

    def __init__(self, client: Client, vm: VmHandle) -> None:
        self._client, self._vm = client, vm

    def create(self, name: str, *, memory: bool = False, wait: bool = True) -> Snapshot:
        """Save the disk and, with ``memory`` (a running or paused VM), RAM and devices.

        ``wait=False`` returns once the server accepted it (``complete`` is False).
        """
        request = SnapshotRequest(name=name, memory=memory, wait=wait)
        return self._client._run(routes.take_snapshot(self._vm.id, request))

    def list(self) -> list[Snapshot]:
        """The complete snapshots, oldest first."""
        return self._client._run(routes.list_snapshots(self._vm.id))

    def get(self, name: str) -> Snapshot:
        """Raises SnapshotNotFound."""
        return self._client._run(routes.get_snapshot(self._vm.id, name))

    def delete(self, name: str) -> None:
        self._client._run(routes.delete_snapshot(self._vm.id, name))

    def restore(self, name: str, *, wait: bool = True) -> Vm:
        """Put the VM back to the snapshot (what ran since is lost); ``wait``: return once
        it runs again (or is paused, or stopped for a disk-only snapshot). Refreshes
        ``vm.info``. Not resent after a connection reset."""
        call = routes.restore_snapshot(self._vm.id, name, RestoreRequest(wait=wait))
        return self._vm._update(self._client._run(call))


class ConsoleSession:
    """The serial console: bytes in and out. Iterating yields output until it closes."""

    def __init__(self, ws: WebSocketSession) -> None:
        self._ws = ws

    def send(self, data: bytes | str) -> None:
        """Type ``data`` into the console."""
        if isinstance(data, str):
            self._ws.send_text(data)
        else:
            self._ws.send_bytes(data)

    def receive(self, timeout: float | None = None) -> bytes:
        """The next output (b"" once the console closed, e.g. the VM stopped).

        Raises TimeoutError when nothing came within ``timeout`` seconds.
        """
        try:
            while (data := frame_bytes(self._ws.receive(timeout))) is None:
                pass
        except queue.Empty:
            raise TimeoutError(f"no console output within {timeout} s") from None
        except WebSocketDisconnect:
            return b""
        return data

    def __iter__(self) -> Iterator[bytes]:
        while data := self.receive():
            yield data

    def close(self) -> None:
        self._ws.close()
