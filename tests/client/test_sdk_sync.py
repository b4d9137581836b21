"""``hypermachine.client.Client`` against a real server and a real guest."""

from __future__ import annotations

import time

import httpx
import pydantic
import pytest
from httpx_ws import WebSocketUpgradeError, connect_ws

from clientlive import FREE_TIER_LIMIT, Live, wait_for_log
from hypermachine.client import (
    Client,
    ConsoleBusy,
    ExecOutput,
    ExecResult,
    ExecStatus,
    GuestPathNotFound,
    HostCapabilities,
    ImageNotFound,
    InvalidState,
    NotFound,
    RateLimited,
    Unauthorized,
    VmHandle,
    VmMetrics,
    VmNotFound,
    VmState,
)

pytestmark = pytest.mark.qemu


def test_exec_returns_the_result_with_its_exit_code(guest: VmHandle) -> None:
    result = guest.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert isinstance(result, ExecResult)
    assert (result.status, result.exit_code) == (ExecStatus.EXITED, 3)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert guest.exec(["cat"], stdin="typed\n").stdout == "typed\n"
    binary = guest.exec(["od", "-An", "-tx1"], stdin=b"\x00\xff")
    assert binary.stdout is not None and binary.stdout.split() == ["00", "ff"]


def test_exec_stream_yields_output_while_the_command_runs(guest: VmHandle) -> None:
    arrivals: list[tuple[float, ExecOutput | ExecResult]] = []
    script = "echo first; sleep 2; echo second >&2"
    for piece in guest.exec_stream(["sh", "-c", script]):
        arrivals.append((time.monotonic(), piece))
    *pieces, (ended, result) = arrivals
    assert isinstance(result, ExecResult) and result.exit_code == 0
    outputs = [(at, p) for at, p in pieces if isinstance(p, ExecOutput)]
    assert [(p.stream, p.text) for _, p in outputs] == [
        ("stdout", "first\n"),
        ("stderr", "second\n"),
    ]
    assert ended - outputs[0][0] > 1.5, "the first line came only at the end"


def test_files_round_trip_bytes_and_text(guest: VmHandle) -> None:
    every_byte = bytes(range(256)) * 64
    written = guest.files.write("/tmp/sdk.bin", every_byte)
    assert (written.path, written.size) == ("/tmp/sdk.bin", len(every_byte))
    assert guest.files.read("/tmp/sdk.bin") == every_byte
    guest.files.write("/tmp/sdk.txt", "héllo\n")
    assert guest.exec(["cat", "/tmp/sdk.txt"]).stdout == "héllo\n"
    with pytest.raises(GuestPathNotFound) as missing:
        guest.files.read("/no/such/file")
    assert missing.value.code == "GUEST_PATH_NOT_FOUND" and isinstance(missing.value, NotFound)


def _read_until(session: object, marker: bytes, timeout: float = 30) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{marker!r} not on the console: {seen[-300:]!r}"
        seen += session.receive(timeout=left)  # type: ignore[attr-defined]
    return seen


def test_console_is_one_interactive_session(live: Live, guest: VmHandle) -> None:
    with guest.console() as session:
        session.send('echo HM-""CONSOLE-$((6*7))\r')
        assert b"HM-CONSOLE-42" in _read_until(session, b"HM-CONSOLE-42")
        with pytest.raises(ConsoleBusy) as busy, guest.console():
            pass
        assert busy.value.code == "CONSOLE_BUSY"
        # The refusal ends its connection, so no client reuses one the server left behind.
        headers = {"Authorization": f"Bearer {live.key}"}
        with (
            httpx.Client(base_url=live.url, headers=headers) as http,
            pytest.raises(WebSocketUpgradeError) as refused,
            connect_ws(f"/api/v1/vms/{guest.id}/console", http),
        ):
            pass
        assert refused.value.response.status_code == 409
        assert refused.value.response.headers["connection"] == "close"
    with guest.console() as again:  # released when the first one left
        again.send("\r")
        assert _read_until(again, b"hm-tiny#")


def test_metrics_logs_script_host_and_images(live: Live, guest: VmHandle) -> None:
    metrics = guest.metrics()
    assert isinstance(metrics, VmMetrics) and metrics.vm_id == guest.id
    assert metrics.memory_configured_bytes == 512 * 2**20
    assert any("HM-READY" in line for line in guest.logs(500))
    ran = guest.script('print(vm.name); vm.state + "/" + args.n', {"n": "x"})
    assert (ran.output, ran.result) == (["sdk-guest"], "running/x")
    with live.client() as hm:
        assert isinstance(hm.host(), HostCapabilities)
        images = {image.name: image for image in hm.images.list()}
        assert images["tiny"].available


def test_errors_are_the_servers_classes_with_code_message_details(
    live: Live, guest: VmHandle
) -> None:
    with live.client() as hm:
        with pytest.raises(VmNotFound) as missing:
            hm.vms.get("vm-000000000000")
        err = missing.value
        assert (err.code, err.status) == ("VM_NOT_FOUND", 404)
        assert "vm-000000000000" in err.message and err.details == {"id": "vm-000000000000"}
        with pytest.raises(InvalidState) as running:
            hm.vms.get(guest.id).start()
        assert running.value.details["current"] == "running"
        with pytest.raises(ImageNotFound):
            hm.vms.create(name="no-image", image="no-such-image")
        with pytest.raises(pydantic.ValidationError):  # checked before anything is sent
            hm.vms.create(name="bad name!", image="tiny")
    with Client(live.url, "not-a-key") as stranger, pytest.raises(Unauthorized):
        list(stranger.vms.list())


def test_rate_limited_carries_retry_after(live: Live) -> None:
    with Client(live.url, live.free_key, max_retries=0) as hm, pytest.raises(RateLimited) as hit:
        for _ in range(FREE_TIER_LIMIT + 1):
            hm.host()
    assert hit.value.code == "RATE_LIMITED"
    assert hit.value.retry_after is not None and 1 <= hit.value.retry_after <= 60
    # Retries would have to wait about a minute: more than allowed, so it fails at once.
    started = time.monotonic()
    with Client(live.url, live.free_key, max_retry_wait=1) as hm, pytest.raises(RateLimited):
        hm.host()
    assert time.monotonic() - started < 5


def test_an_error_answering_a_body_closes_the_connection(live: Live) -> None:
    """Answered before its body was read (no such route, no key), such a request would
    leave hypercorn's Trio worker sometimes never answering the next request on the
    connection (about 1 in 20): the server closes it instead, and the next one works."""
    key = {"Authorization": f"Bearer {live.key}"}
    with httpx.Client(base_url=live.url, timeout=5) as http:
        for _ in range(60):
            refused = http.post("/api/v1/no/such/route", json={"x": 1}, headers=key)
            assert (refused.status_code, refused.headers["Connection"]) == (404, "close")
            assert http.get("/health").status_code == 200
        stranger = http.post(
            "/api/v1/vms", json={"name": "x"}, headers={"Authorization": "Bearer no"}
        )
        assert (stranger.status_code, stranger.headers["Connection"]) == (401, "close")
        assert http.get("/api/v1/vms", headers=key).status_code == 200


def test_list_iterates_pages_and_get_finds_by_name(live: Live, guest: VmHandle) -> None:
    with live.client() as hm:
        made = [
            hm.vms.create(
                name=f"page-{i}", image="tiny", disk_gb=1, labels={"suite": "pages"}, wait=True
            )
            for i in range(3)
        ]
        try:
            listed = list(hm.vms.list(labels={"suite": "pages"}, page_size=2))
            assert [vm.id for vm in listed] == [vm.id for vm in made]
            assert all(vm.state is VmState.STOPPED for vm in listed)
            running = [vm.id for vm in hm.vms.list(state=["running"])]
            assert guest.id in running and made[0].id not in running
            assert hm.vms.get("page-1").id == made[1].id
        finally:
            for vm in made:
                vm.delete()


def test_lifecycle_and_an_idempotent_create(live: Live) -> None:
    with live.client() as hm:
        vm = hm.vms.create(
            name="sdk-life", image="tiny", memory_mb=512, disk_gb=1, start=True, wait=True,
            idempotency_key="sdk-life-1",
        )  # fmt: skip
        assert vm.state.value == "running"  # (`is` would narrow vm.state for mypy)
        again = hm.vms.create(name="sdk-life", image="tiny", memory_mb=512, disk_gb=1,
                              start=True, wait=True, idempotency_key="sdk-life-1")  # fmt: skip
        assert again.id == vm.id
        assert vm.pause().state is VmState.PAUSED and vm.state is VmState.PAUSED
        assert vm.resume().state is VmState.RUNNING
        assert vm.stop(force=True, wait=True).state is VmState.STOPPED
        assert vm.wait_for("stopped", timeout=5).state is VmState.STOPPED
        vm.delete()
        with pytest.raises(VmNotFound):
            vm.refresh()


def test_events_resume_after_an_event_id(live: Live) -> None:
    with live.client() as hm:
        logged = list(hm.events(after=0, follow=False))
        assert logged and [e.id for e in logged] == sorted(e.id for e in logged)
        resumed = list(hm.events(after=logged[0].id, follow=False))
        assert [e.id for e in resumed] == [e.id for e in logged[1:]]
        made = hm.vms.create(name="sdk-events", image="tiny", disk_gb=1)
        follow = hm.events(after=logged[-1].id)  # Last-Event-ID: the backlog since, then live
        created = next(follow)
        assert created.id > logged[-1].id
        assert (created.type.value, created.vm_id) == ("vm.created", made.id)
        made.delete()
        deleted = next(e for e in follow if e.type.value == "vm.deleted")
        follow.close()
        assert deleted.vm_id == made.id


def test_the_guest_fixture_saw_the_boot_marker(guest: VmHandle) -> None:
    assert any(line.startswith("HM-READY") for line in wait_for_log(guest, "HM-READY"))
