"""``AsyncClient``: the SDK for async code, under asyncio or Trio (httpx runs on anyio).

Each method is the awaitable form of the one of the same name in ``sync_client``;
what to send and how to read the answer comes from ``routes`` and ``base``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import anyio
import httpx
from httpx_sse import aconnect_sse
from httpx_ws import (
    AsyncWebSocketSession,
    WebSocketDisconnect,
    WebSocketUpgradeError,
    aconnect_ws,
)

from ..errors import VmNotFound
from ..groups import sole_exception
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
from .base import BaseClient, VmHandleBase, aread_error_body, frame_bytes
from .errors import error_from_response

__all__ = [
    "AsyncClient",
    "AsyncConsoleSession",
    "AsyncFiles",
    "AsyncImages",
    "AsyncSnapshots",
    "AsyncVmHandle",
]

T = TypeVar("T")


class AsyncClient(BaseClient):
    """A HyperMachine server, for async code: ``async with AsyncClient() as hm: ...``.

    The same calls as :class:`~hypermachine.client.Client`, awaited.
    """

    def __init__(
        self,
        server: str | None = None,
        api_key: str | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **options: Any,
    ) -> None:
        super().__init__(server, api_key, **options)
        self._http = httpx.AsyncClient(
            **self._http_options(),
            transport=transport,
            event_hooks={"response": [aread_error_body]},
        )
        self.vms = AsyncVms(self)
        self.images = AsyncImages(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: routes.Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.send(self._request(self._http, call))
            except httpx.TransportError as err:
                delay = self._retry_delay(call, attempt, error=err)
                if delay is None:
                    raise
            else:
                delay = self._retry_delay(call, attempt, response=response)
                if delay is None:
                    return self._result(call, response)
            await anyio.sleep(delay)
            attempt += 1

    async def _sse(
        self, stream: routes.Stream, idle: float | None = None
    ) -> AsyncIterator[tuple[str, str]]:
        options = self._stream_options(stream, idle)
        async with aconnect_sse(self._http, "GET", stream.path, **options) as source:
            self._check_stream(source.response)
            async for message in source.aiter_sse():
                yield message.event, message.data

    async def host(self, *, refresh: bool = False) -> HostCapabilities:
        return await self._run(routes.host(refresh))

    async def events(
        self,
        *,
        vm_id: str | None = None,
        after: int | None = None,
        follow: bool = True,
        quiet: float = 1.0,
    ) -> AsyncIterator[Event]:
        """See :meth:`Client.events <hypermachine.client.Client.events>`."""
        failures = 0
        while True:
            try:
                async for _, data in self._sse(
                    routes.events(vm_id, after), None if follow else quiet
                ):
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
                await anyio.sleep(delay)


class AsyncImages:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> list[ImageInfo]:
        return await self._client._run(routes.list_images())


class AsyncVms:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        *,
        name: str,
        image: str | None = None,
        start: bool = False,
        wait: bool = False,
        from_snapshot: routes.SnapshotSource | None = None,
        idempotency_key: str | None = None,
        **spec: Any,
    ) -> AsyncVmHandle:
        call = routes.new_vm(
            name, image, start=start, wait=wait, from_snapshot=from_snapshot,
            idempotency_key=idempotency_key, spec=spec,
        )  # fmt: skip
        return AsyncVmHandle(self._client, await self._client._run(call))

    async def list(
        self,
        *,
        state: list[VmState | str] | None = None,
        labels: dict[str, str] | None = None,
        name: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[AsyncVmHandle]:
        cursor: str | None = None
        while True:
            page = await self._client._run(
                routes.list_vms(
                    states=state or (), labels=labels, name=name, limit=page_size, cursor=cursor
                )
            )
            for vm in page.vms:
                yield AsyncVmHandle(self._client, vm)
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def get(self, vm: str) -> AsyncVmHandle:
        try:
            return AsyncVmHandle(self._client, await self._client._run(routes.get_vm(vm)))
        except VmNotFound:
            page = await self._client._run(routes.list_vms(name=vm, limit=1))
            if not page.vms:
                raise
            return AsyncVmHandle(self._client, page.vms[0])


_NOW = LifecycleRequest()


class AsyncVmHandle(VmHandleBase):
    def __init__(self, client: AsyncClient, info: Vm) -> None:
        super().__init__(info)
        self._client = client
        self.files = AsyncFiles(client, self)
        self.snapshots = AsyncSnapshots(client, self)

    async def refresh(self) -> Vm:
        return self._update(await self._client._run(routes.get_vm(self.id)))

    async def start(self, *, wait: bool = False, timeout: float | None = None) -> Vm:
        body = LifecycleRequest(wait=wait, timeout_s=timeout)
        return self._update(await self._client._run(routes.lifecycle(self.id, "start", body)))

    async def stop(
        self, *, force: bool = False, wait: bool = False, timeout: float | None = None
    ) -> Vm:
        body = StopRequest(force=force, wait=wait, timeout_s=timeout)
        return self._update(await self._client._run(routes.lifecycle(self.id, "stop", body)))

    async def pause(self) -> Vm:
        return self._update(await self._client._run(routes.lifecycle(self.id, "pause", _NOW)))

    async def resume(self) -> Vm:
        return self._update(await self._client._run(routes.lifecycle(self.id, "resume", _NOW)))

    async def reboot(self) -> Vm:
        return self._update(await self._client._run(routes.lifecycle(self.id, "reboot", _NOW)))

    async def delete(self, *, force: bool = False) -> None:
        await self._client._run(routes.delete_vm(self.id, force=force))

    async def wait_for(self, state: VmState | str, timeout: float = 60.0) -> Vm:
        return self._update(await self._client._run(routes.wait_vm(self.id, [state], timeout)))

    async def metrics(self) -> VmMetrics:
        return await self._client._run(routes.vm_metrics(self.id))

    async def fork(
        self,
        name: str,
        *,
        snapshot: str | None = None,
        count: int = 1,
        wait: bool = False,
        timeout: float | None = None,
        ports: Literal["remap", "refuse"] = "remap",
        ips: list[str] | None = None,
    ) -> list[AsyncVmHandle]:
        request = routes.fork_request(name, snapshot, count, wait, timeout, ports, ips)
        children = await self._client._run(routes.fork_vm(self.id, request))
        return [AsyncVmHandle(self._client, vm) for vm in children]

    async def hibernate(self) -> Vm:
        return self._update(await self._client._run(routes.hibernate(self.id)))

    async def exec(
        self,
        argv: list[str],
        *,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        env: dict[str, str] | None = None,
        wait_agent: float | None = None,
    ) -> ExecResult:
        request = routes.exec_request(argv, timeout=timeout, stdin=stdin, env=env)
        return await self._client._run(routes.run_exec(self.id, request, wait_agent))

    async def exec_stream(
        self,
        argv: list[str],
        *,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
        env: dict[str, str] | None = None,
        wait_agent: float | None = None,
    ) -> AsyncIterator[ExecOutput | ExecResult]:
        request = routes.exec_request(argv, timeout=timeout, stdin=stdin, env=env, wait=False)
        started = await self._client._run(routes.run_exec(self.id, request, wait_agent))
        async for event, data in self._client._sse(routes.exec_stream(self.id, started.exec_id)):
            yield routes.exec_piece(event, data)

    async def logs(self, tail: int = 100) -> list[str]:
        return await self._client._run(routes.console_log(self.id, tail))

    @asynccontextmanager
    async def console(self) -> AsyncIterator[AsyncConsoleSession]:
        try:
            async with aconnect_ws(routes.console_path(self.id), self._client._http) as ws:  # type: ignore[var-annotated]
                yield AsyncConsoleSession(ws)
        except WebSocketUpgradeError as err:
            raise error_from_response(err.response) from None
        except BaseExceptionGroup as group:  # httpx-ws runs the session in a task group
            raise sole_exception(group) from None

    async def script(
        self,
        code: str,
        args: dict[str, Any] | None = None,
        *,
        limits: dict[str, int] | None = None,
    ) -> ScriptResponse:
        request = ScriptRequest(code=code, args=args, limits=limits)
        return await self._client._run(routes.run_script(self.id, request))


class AsyncFiles:
    def __init__(self, client: AsyncClient, vm: AsyncVmHandle) -> None:
        self._client, self._vm = client, vm

    async def read(self, path: str, *, wait_agent: float | None = None) -> bytes:
        return await self._client._run(routes.read_file(self._vm.id, path, wait_agent))

    async def write(
        self, path: str, data: bytes | str, *, wait_agent: float | None = None
    ) -> FileWritten:
        return await self._client._run(routes.write_file(self._vm.id, path, data, wait_agent))


class AsyncSnapshots:
    def __init__(self, client: AsyncClient, vm: AsyncVmHandle) -> None:
        self._client, self._vm = client, vm

    async def create(self, name: str, *, memory: bool = False, wait: bool = True) -> Snapshot:
        request = SnapshotRequest(name=name, memory=memory, wait=wait)
        return await self._client._run(routes.take_snapshot(self._vm.id, request))

    async def list(self) -> list[Snapshot]:
        return await self._client._run(routes.list_snapshots(self._vm.id))

    async def get(self, name: str) -> Snapshot:
        return await self._client._run(routes.get_snapshot(self._vm.id, name))

    async def delete(self, name: str) -> None:
        await self._client._run(routes.delete_snapshot(self._vm.id, name))

    async def restore(self, name: str, *, wait: bool = True) -> Vm:
        call = routes.restore_snapshot(self._vm.id, name, RestoreRequest(wait=wait))
        return self._vm._update(await self._client._run(call))


class AsyncConsoleSession:
    def __init__(self, ws: AsyncWebSocketSession) -> None:
        self._ws = ws

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            await self._ws.send_text(data)
        else:
            await self._ws.send_bytes(data)

    async def receive(self, timeout: float | None = None) -> bytes:
        """The next output (b"" once closed). Raises TimeoutError after ``timeout`` s."""
        try:
            while (data := frame_bytes(await self._ws.receive(timeout))) is None:
                pass
        except WebSocketDisconnect:
            return b""
        return data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._outputs()

    async def _outputs(self) -> AsyncIterator[bytes]:
        while data := await self.receive():
            yield data

    async def aclose(self) -> None:
        await self._ws.close()
