"""The app served for real (Hypercorn on Trio, in the test's nursery) and real clients for it:
server-sent events over httpx, and a websocket client built on wsproto."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from hypermachine.api import Services, create_app
from realserver import free_port


@asynccontextmanager
async def served(services: Services) -> AsyncIterator[str]:
    """The app on a free local port; yields its base URL, stops serving on exit."""
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.read_timeout = None
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve(
                create_app(services), config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop.set()
            nursery.cancel_scope.deadline = trio.current_time() + 10


class Sse:
    """The messages of one SSE response, read in a task of its own."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.arrived = trio.Event()
        self.scope = trio.CancelScope()

    async def run(
        self, client: httpx.AsyncClient, url: str, headers: dict[str, str], task_status: Any
    ) -> None:
        with self.scope:
            async with client.stream("GET", url, headers=headers) as response:
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                task_status.started()
                fields: dict[str, str] = {}
                async for line in response.aiter_lines():
                    if line.startswith(":"):
                        continue
                    if line:
                        key, _, value = line.partition(": ")
                        fields[key] = value
                        continue
                    if "data" in fields:
                        fields["data"] = json.loads(fields["data"])
                        self.messages.append({**fields, "at": trio.current_time()})
                        self.arrived.set()
                        self.arrived = trio.Event()
                    fields = {}

    async def until(self, check: Any, timeout: float = 60) -> list[dict[str, Any]]:
        with trio.fail_after(timeout):
            while not check(self.messages):
                await self.arrived.wait()
        return self.messages

    def close(self) -> None:
        self.scope.cancel()


async def open_sse(
    nursery: trio.Nursery, client: httpx.AsyncClient, url: str, **headers: str
) -> Sse:
    sse = Sse()
    with trio.fail_after(30):
        await nursery.start(sse.run, client, url, headers)
    return sse


class WebsocketRefused(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status, self.body = status, body


class Websocket:
    """A minimal real websocket client (wsproto over a Trio TCP stream)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._pending: list[Any] = []

    @classmethod
    @asynccontextmanager
    async def connect(cls, base_url: str, path: str) -> AsyncIterator[Websocket]:
        host, port = base_url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            ws = cls(stream)
            await ws._send(Request(host=f"{host}:{port}", target=path))
            await ws._handshake()
            yield ws
            await ws._send(CloseConnection(code=1000))

    async def _send(self, event: Any) -> None:
        await self._stream.send_all(self._ws.send(event))

    async def _next(self) -> Any:
        while not self._pending:
            data = await self._stream.receive_some(65536)
            self._ws.receive_data(data or None)
            self._pending.extend(self._ws.events())
        return self._pending.pop(0)

    async def _handshake(self) -> None:
        status, body = 0, b""
        while True:
            event = await self._next()
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise WebsocketRefused(status, body)
            if isinstance(event, RejectData):
                body += event.data
                if event.body_finished:
                    raise WebsocketRefused(status, body)

    async def send_text(self, text: str) -> None:
        await self._send(TextMessage(data=text))

    async def receive(self) -> bytes:
        """The next data frame's payload (text encoded as UTF-8)."""
        while True:
            event = await self._next()
            if isinstance(event, BytesMessage):
                return bytes(event.data)
            if isinstance(event, TextMessage):
                return event.data.encode()
            if isinstance(event, CloseConnection):
                raise EOFError(f"websocket closed: {event.code}")
