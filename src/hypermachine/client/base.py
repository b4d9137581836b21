"""What ``Client`` and ``AsyncClient`` share: settings, requests, retries, answers.

The split follows httpx's own ``BaseClient``/``Client``/``AsyncClient``: everything
that does no I/O is here, so the two clients differ only in how they send and wait.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from typing import Any, TypeVar

import httpx
from wsproto.events import BytesMessage, Event, TextMessage

from .. import __version__
from ..models import Vm, VmState
from .errors import error_from_response
from .routes import Call, Stream

__all__ = ["DEFAULT_SERVER", "BaseClient", "VmHandleBase", "frame_bytes"]

T = TypeVar("T")

DEFAULT_SERVER = "http://127.0.0.1:8080"
# A connection that broke before or while the request went out: safe to resend when
# the call is idempotent. Timeouts are not among them (the server may still be busy).
_RESETS = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
_BACKOFF_CAP_S = 8.0
_STREAM_IDLE_S = 60.0  # the server sends a keep-alive every 15 s on its streams


class BaseClient:
    """Settings and every decision that is not I/O.

    Args:
        server: base URL; default ``HM_SERVER``, else ``http://127.0.0.1:8080``.
        api_key: sent as ``Authorization: Bearer``; default ``HM_API_KEY``.
        timeout: seconds for connecting and for ordinary answers (calls that make the
            server wait, e.g. ``wait=True``, allow for that on top).
        max_retries: resends after a 429 or, for idempotent calls, a connection reset.
        backoff: first retry delay in seconds, doubling (with jitter) up to 8 s.
        max_retry_wait: a 429 asking to wait longer than this is raised at once.
    """

    def __init__(
        self,
        server: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_retry_wait: float = 30.0,
    ) -> None:
        self.server = (server or os.environ.get("HM_SERVER") or DEFAULT_SERVER).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("HM_API_KEY") or None
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_retry_wait = max_retry_wait

    def __repr__(self) -> str:
        return f"{type(self).__name__}(server={self.server!r})"

    def _http_options(self) -> dict[str, Any]:
        headers = {"User-Agent": f"hypermachine-client/{__version__}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return {"base_url": self.server, "headers": headers, "timeout": self.timeout}

    def _timeout(self, read: float | None) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=max(self.timeout, read or 0.0))

    def _request(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
        return http.build_request(
            call.method,
            call.path,
            params=tuple(call.params),
            json=call.json,
            content=call.content,
            headers=call.headers,
            timeout=self._timeout(call.read_timeout),
        )

    def _stream_options(self, stream: Stream, idle: float | None) -> dict[str, Any]:
        """Keyword arguments for httpx-sse's ``connect_sse``; ``idle``: the longest silence."""
        read = _STREAM_IDLE_S if idle is None else idle
        timeout = httpx.Timeout(self.timeout, read=read)
        return {"params": tuple(stream.params), "headers": dict(stream.headers), "timeout": timeout}

    def _backoff(self, attempt: int) -> float:
        return float(min(_BACKOFF_CAP_S, self.backoff * 2**attempt) * random.uniform(0.5, 1.0))

    def _retry_delay(
        self,
        call: Call[Any],
        attempt: int,
        *,
        response: httpx.Response | None = None,
        error: Exception | None = None,
    ) -> float | None:
        """Seconds to wait before sending ``call`` again, or None to give this outcome back.

        A 429 is retried for any call (the server refused it before doing anything);
        a connection reset only for idempotent calls.
        """
        if attempt >= self.max_retries:
            return None
        if error is not None:
            return (
                self._backoff(attempt) if call.idempotent and isinstance(error, _RESETS) else None
            )
        if response is None or response.status_code != 429:
            return None
        wait = _retry_after(response)
        if wait > self.max_retry_wait:
            return None
        return max(wait, self._backoff(attempt))

    def _reconnect_delay(self, failures: int) -> float | None:
        """Before re-opening a broken event stream; None once retries are used up."""
        return None if failures >= self.max_retries else self._backoff(failures)

    @staticmethod
    def _result(call: Call[T], response: httpx.Response) -> T:
        if response.is_error:
            raise error_from_response(response)
        return call.parse(response)

    @staticmethod
    def _check_stream(response: httpx.Response) -> None:
        if response.is_error:
            raise error_from_response(response)


def _retry_after(response: httpx.Response) -> float:
    """``Retry-After`` in seconds (a number or an HTTP date); 0 when absent."""
    raw = response.headers.get("Retry-After", "")
    if raw.isdigit():
        return float(raw)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())


def read_error_body(response: httpx.Response) -> None:
    """A response hook: read error bodies, also of streams and refused websockets."""
    if response.is_error:
        response.read()


async def aread_error_body(response: httpx.Response) -> None:
    if response.is_error:
        await response.aread()


def frame_bytes(event: Event) -> bytes | None:
    """A websocket data frame's payload (text as UTF-8); None for control frames."""
    if isinstance(event, BytesMessage):
        return bytes(event.data)
    if isinstance(event, TextMessage):
        return event.data.encode()
    return None


class VmHandleBase:
    """A VM on the server: its id and the last :class:`Vm` the server reported.

    Every call that returns a ``Vm`` also refreshes :attr:`info`.
    """

    def __init__(self, info: Vm) -> None:
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def state(self) -> VmState:
        return self.info.state

    def _update(self, vm: Vm) -> Vm:
        self.info = vm
        return vm

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.name!r} {self.state.value}>"
