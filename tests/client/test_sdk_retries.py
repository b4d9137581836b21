"""The client's retry policy and paths, against scripted transports (a real server neither resets
connections nor answers 429 with a short Retry-After on demand).

Also: importing the SDK brings in none of the server's dependencies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from hypermachine.client import (
    Client,
    Conflict,
    RateLimited,
    ValidationFailed,
    Vm,
    VmHandle,
    VmNotFound,
    error_class,
)

VM = {
    "id": "vm-1", "uuid": "u-1", "name": "one", "image": "tiny", "state": "running",
    "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
}  # fmt: skip
Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> Client:
    return Client("http://hm.test", "k", transport=httpx.MockTransport(handler), backoff=0)


def scripted(*outcomes: httpx.Response | type[Exception]) -> tuple[Handler, list[httpx.Request]]:
    """A transport answering each request with the next outcome (an exception is raised)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        outcome = outcomes[len(seen) - 1]
        if isinstance(outcome, httpx.Response):
            return outcome
        raise outcome("connection reset by peer", request=request)  # type: ignore[call-arg]

    return handle, seen


def error(status: int, code: str, **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": "no", "details": {}}}
    return httpx.Response(status, json=body, headers=headers)


def test_429_is_retried_after_retry_after() -> None:
    handle, seen = scripted(
        error(429, "RATE_LIMITED", **{"Retry-After": "0"}), httpx.Response(200, json=VM)
    )
    with client(handle) as hm:
        assert hm.vms.get("vm-1").id == "vm-1"
    assert len(seen) == 2


def test_429_past_the_retries_is_raised_with_retry_after() -> None:
    limited = error(429, "RATE_LIMITED", **{"Retry-After": "0"})
    handle, seen = scripted(limited, limited)
    with Client("http://hm.test", transport=httpx.MockTransport(handle), backoff=0,
                max_retries=1) as hm, pytest.raises(RateLimited) as hit:  # fmt: skip
        hm.host()
    assert len(seen) == 2 and hit.value.retry_after == 0


def test_a_reset_is_retried_only_for_idempotent_calls() -> None:
    handle, seen = scripted(httpx.ReadError, httpx.Response(200, json=VM))
    with client(handle) as hm:
        vm = hm.vms.get("vm-1")
    assert len(seen) == 2
    handle, seen = scripted(httpx.RemoteProtocolError)
    vm._client = client(handle)
    with pytest.raises(httpx.RemoteProtocolError):
        vm.start()  # not idempotent: a second start could do something else
    assert len(seen) == 1


def test_create_resends_its_idempotency_key() -> None:
    handle, seen = scripted(httpx.ReadError, httpx.Response(201, json=VM))
    with client(handle) as hm:
        hm.vms.create(name="one", image="tiny")
    keys = [r.headers["Idempotency-Key"] for r in seen]
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) == 32


SNAPSHOT = {
    "name": "s1", "vm_id": "vm-1", "created_at": "2026-01-01T00:00:00Z", "memory": True,
    "size_bytes": 1, "vm_state": "running",
}  # fmt: skip


def test_snapshot_reads_are_retried_and_what_changes_state_is_sent_once() -> None:
    handle, seen = scripted(
        httpx.ReadError, httpx.Response(200, json={"snapshots": [SNAPSHOT]}),
        httpx.ReadError, httpx.Response(200, json=SNAPSHOT),
    )  # fmt: skip
    vm = VmHandle(client(handle), Vm.model_validate(VM))
    assert [s.name for s in vm.snapshots.list()] == ["s1"]
    assert vm.snapshots.get("s1").memory is True
    assert len(seen) == 4
    acts: list[Callable[[VmHandle], Any]] = [
        lambda vm: vm.snapshots.create("s2", memory=True),
        lambda vm: vm.snapshots.restore("s1"),
        lambda vm: vm.fork("kid", snapshot="s1"),
        lambda vm: vm.hibernate(),
    ]
    for act in acts:
        handle, seen = scripted(httpx.ReadError)
        with pytest.raises(httpx.ReadError):
            act(VmHandle(client(handle), Vm.model_validate(VM)))
        assert len(seen) == 1, seen  # a second one could restore, fork or snapshot twice


def test_a_vm_from_a_snapshot_sends_no_idempotency_key_and_is_not_resent() -> None:
    handle, seen = scripted(httpx.ReadError)
    with client(handle) as hm, pytest.raises(httpx.ReadError):
        hm.vms.create(name="two", from_snapshot=("vm-1", "s1"))
    assert len(seen) == 1 and "Idempotency-Key" not in seen[0].headers
    assert json.loads(seen[0].content)["from_snapshot"] == {"vm_id": "vm-1", "snapshot": "s1"}
    with client(handle) as hm:
        with pytest.raises(ValueError, match="not both"):
            hm.vms.create(name="two", image="tiny", from_snapshot=("vm-1", "s1"))
        with pytest.raises(ValueError, match="not both"):
            hm.vms.create(name="two")
        with pytest.raises(ValueError, match="Idempotency-Key"):
            hm.vms.create(name="two", from_snapshot=("vm-1", "s1"), idempotency_key="k")
    assert len(seen) == 1  # refused before anything was sent


def test_dot_segments_stay_in_their_place() -> None:
    """An HTTP client resolves ``.`` and ``..`` in a path: unescaped, deleting the
    snapshot ``..`` would be ``DELETE /api/v1/vms/vm-1``, the VM itself."""
    handle, seen = scripted(*[error(400, "VALIDATION_ERROR")] * 4)
    vm = VmHandle(client(handle), Vm.model_validate(VM))
    for name in (".", "..", "a/../..", ".."):
        with pytest.raises(ValidationFailed):
            vm.snapshots.delete(name)
    assert [r.url.raw_path.decode() for r in seen] == [
        "/api/v1/vms/vm-1/snapshots/%2E", "/api/v1/vms/vm-1/snapshots/%2E%2E",
        "/api/v1/vms/vm-1/snapshots/a%2F..%2F..", "/api/v1/vms/vm-1/snapshots/%2E%2E",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="empty"):
        vm.snapshots.get("")


def test_an_unknown_code_gets_a_class_under_its_status() -> None:
    handle, _ = scripted(error(409, "SNAPSHOT_BUSY"))
    with client(handle) as hm, pytest.raises(Conflict) as raised:
        hm.vms.get("vm-1")
    assert type(raised.value).__name__ == "SnapshotBusy"
    assert raised.value.code == "SNAPSHOT_BUSY" and raised.value.status == 409
    assert error_class("VM_NOT_FOUND", 404) is VmNotFound


class _Broken(httpx.SyncByteStream):
    """An event stream that sends ``frames`` and then loses its connection."""

    def __init__(self, frames: bytes) -> None:
        self.frames = frames

    def __iter__(self) -> Iterator[bytes]:
        yield self.frames
        raise httpx.ReadError("connection reset by peer")


def _event(event_id: int) -> bytes:
    data = {"id": event_id, "time": "2026-01-01T00:00:00Z", "type": "vm.created", "data": {}}
    return f"id: {event_id}\nevent: vm.created\ndata: {json.dumps(data)}\n\n".encode()


def test_events_reconnect_with_last_event_id() -> None:
    sse = {"content-type": "text/event-stream"}
    handle, seen = scripted(
        httpx.Response(200, headers=sse, stream=_Broken(_event(5))),
        httpx.Response(200, headers=sse, stream=_Broken(_event(6))),
    )
    with client(handle) as hm:
        events = hm.events(after=4)
        assert [next(events).id, next(events).id] == [5, 6]
        events.close()
    assert [r.headers["Last-Event-ID"] for r in seen] == ["4", "5"]


def test_importing_the_sdk_and_the_cli_needs_none_of_the_server() -> None:
    check = (
        "import sys, hypermachine.client, hypermachine.cli, hypermachine.vmcli.run; "
        "server = ('quart', 'wasmtime', 'hypercorn', 'qemu', 'werkzeug', 'psutil', 'prometheus')"
        "; loaded = sorted(m for m in sys.modules if m.startswith(server)); "
        "assert not loaded, loaded"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
