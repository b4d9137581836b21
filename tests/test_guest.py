"""Reaching into a real tiny guest through its real qemu-ga: exec, files, console, events.

One guest is booted and shared by the checks of the big test (a boot costs seconds).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from hypermachine.api import Services
from hypermachine.config import Settings, load_settings
from livehttp import Websocket, WebsocketRefused, open_sse, served
from support import wait_until, wait_until_read

pytestmark = pytest.mark.qemu

OUTPUT_CAP = 64 * 1024
FILE_CAP = 2 * 1024 * 1024
AGENT_WAIT = 120
RESTART_QGA = (
    "(sleep 1; kill $(pidof qemu-ga); sleep 1; /usr/sbin/qemu-ga -m virtio-serial "
    "-p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run -d) "
    ">/dev/null 2>&1 &"
)
KILL_QGA = "(sleep 1; kill $(pidof qemu-ga)) >/dev/null 2>&1 &"


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "data_dir": data_dir,
            "stop_timeout_s": 20.0,
            "qmp_connect_timeout_s": 20.0,
            "exec_output_max_bytes": OUTPUT_CAP,
            "file_max_bytes": FILE_CAP,
            "guest_agent_ping_interval_s": 1.0,
            "guest_agent_command_timeout_s": 5.0,
            "sse_keepalive_s": 1.0,
        },
    )


async def run(client: Any, vm_id: str, query: str = "", **body: Any) -> tuple[int, Any]:
    response = await client.post(f"/api/v1/vms/{vm_id}/exec{query}", json=body)
    return response.status_code, await response.get_json()


async def check_exec(client: Any, vm_id: str) -> None:
    status, got = await run(
        client,
        vm_id,
        f"?wait_agent={AGENT_WAIT}",
        command=["sh", "-c", "echo out; echo err >&2; exit 3"],
    )
    assert status == 200, got
    assert (got["status"], got["exit_code"], got["stdout"], got["stderr"]) == (
        "exited", 3, "out\n", "err\n"
    )  # fmt: skip
    assert got["duration_ms"] >= 0 and got["truncated"] is False and got["streamed"] is False

    status, got = await run(
        client, vm_id, command=["sh", "-c", "read x; echo $x-$FOO"], stdin="hello\n",
        env={"FOO": "bar"},
    )  # fmt: skip
    assert (status, got["stdout"]) == (200, "hello-bar\n"), got

    status, got = await run(client, vm_id, command=["printf", "\\377\\376"])
    assert (status, got["stdout"], got["stdout_b64"]) == (200, None, "//4="), got

    status, got = await run(client, vm_id, command=["head", "-c", "100000", "/dev/zero"])
    assert status == 200 and got["truncated"] and got["stdout_truncated"], got
    assert len(got["stdout"]) == OUTPUT_CAP

    status, got = await run(client, vm_id, command=["sleep", "30"], timeout_s=1)
    assert (status, got["status"], got["signal"]) == (200, "timed_out", 9), got
    assert 1000 <= got["duration_ms"] < 15000

    status, got = await run(client, vm_id, command=["/no/such/program"])
    assert (status, got["error"]["code"]) == (422, "GUEST_OPERATION_FAILED"), got

    hostile: list[dict[str, Any]] = [
        {"command": []},
        {"command": [""]},
        {"command": ["ls", "a\x00b"]},
        {"command": ["ls"], "env": {"BAD-NAME": "x"}},
        {"command": ["ls"], "shell": True},
        {"command": ["ls"], "timeout_s": 10**9},
        {"command": ["ls"], "timeout_s": -1},
        {"command": ["ls"], "stdin": "a", "stdin_b64": "YQ=="},
        {"command": ["ls"], "stdin_b64": "not base64!"},
        {"command": "ls -la"},
    ]
    for body in hostile:
        status, got = await run(client, vm_id, **body)
        assert (status, got["error"]["code"]) == (400, "VALIDATION_ERROR"), (body, got)


async def check_streamed_exec(
    client: Any, http: httpx.AsyncClient, vm_id: str, nursery: trio.Nursery
) -> None:
    script = "for i in 1 2 3 4; do echo tick $i; sleep 1; done; echo bye >&2"
    status, started = await run(client, vm_id, command=["sh", "-c", script], wait=False)
    assert status == 202, started
    assert started["status"] == "running" and started["streamed"] is True
    exec_id = started["exec_id"]
    reader = await open_sse(nursery, http, f"/api/v1/vms/{vm_id}/exec/{exec_id}/stream")
    first = await reader.until(lambda m: any(x["event"] == "stdout" for x in m))
    polled = await (await client.get(f"/api/v1/vms/{vm_id}/exec/{exec_id}")).get_json()
    assert polled["status"] == "running", "output must arrive while the command runs"
    assert "tick 1" in "".join(x["data"].get("text", "") for x in first)
    done = await reader.until(lambda m: m[-1]["event"] == "exit")
    reader.close()
    pieces = [x for x in done if x["event"] == "stdout"]
    assert len(pieces) >= 2, "output came in more than one piece, as it was printed"
    assert "".join(x["data"]["text"] for x in pieces) == "tick 1\ntick 2\ntick 3\ntick 4\n"
    result = done[-1]["data"]
    assert (result["status"], result["exit_code"], result["stderr"]) == ("exited", 0, "bye\n")
    polled = await (await client.get(f"/api/v1/vms/{vm_id}/exec/{exec_id}")).get_json()
    assert polled == result
    listed = await (await client.get(f"/api/v1/vms/{vm_id}/exec")).get_json()
    assert exec_id in [x["exec_id"] for x in listed["execs"]]
    missing = await client.get(f"/api/v1/vms/{vm_id}/exec/ex-nope")
    assert missing.status_code == 404
    assert (await missing.get_json())["error"]["code"] == "EXEC_NOT_FOUND"


async def check_files(client: Any, vm_id: str) -> None:
    url = f"/api/v1/vms/{vm_id}/files"
    put = await client.put(f"{url}?path=/tmp/hello.txt", data=b"hello guest\n")
    assert (put.status_code, await put.get_json()) == (
        200, {"path": "/tmp/hello.txt", "size": 12}
    )  # fmt: skip
    got = await client.get(f"{url}?path=/tmp/hello.txt")
    assert (got.status_code, await got.get_data()) == (200, b"hello guest\n")

    blob = os.urandom(600 * 1024)  # more than two agent chunks
    put = await client.put(f"{url}?path=/tmp/blob.bin", data=blob)
    assert put.status_code == 200, await put.get_json()
    got = await client.get(f"{url}?path=/tmp/blob.bin")
    assert await got.get_data() == blob
    assert got.headers["X-Guest-File-Size"] == str(len(blob))
    _, cat = await run(client, vm_id, command=["md5sum", "/tmp/blob.bin"])
    import hashlib

    assert cat["stdout"].split()[0] == hashlib.md5(blob).hexdigest()

    for method, query, status, code in [
        ("GET", "?path=/no/such/file", 404, "GUEST_PATH_NOT_FOUND"),
        ("PUT", "?path=/no/such/dir/file", 404, "GUEST_PATH_NOT_FOUND"),
        ("GET", "?path=relative/path", 400, "VALIDATION_ERROR"),
        ("GET", "", 400, "VALIDATION_ERROR"),
        ("PUT", "?path=/tmp/a%00b", 400, "VALIDATION_ERROR"),
    ]:
        response = await client.open(f"{url}{query}", method=method, data=b"x")
        body = await response.get_json()
        assert (response.status_code, body["error"]["code"]) == (status, code), (query, body)

    too_big = await client.put(f"{url}?path=/tmp/hello.txt", data=b"x" * (FILE_CAP + 1))
    assert too_big.status_code == 413
    assert (await too_big.get_json())["error"]["code"] == "GUEST_FILE_TOO_LARGE"
    unchanged = await client.get(f"{url}?path=/tmp/hello.txt")
    assert await unchanged.get_data() == b"hello guest\n", "a refused upload changes nothing"


async def check_console(client: Any, base: str, vm_id: str) -> None:
    log = await client.get(f"/api/v1/vms/{vm_id}/console/log?tail=500")
    lines = (await log.get_json())["lines"]
    assert "HM-READY tiny" in lines
    bad = await client.get(f"/api/v1/vms/{vm_id}/console/log?tail=lots")
    assert bad.status_code == 400

    async with Websocket.connect(base, f"/api/v1/vms/{vm_id}/console") as ws:
        await ws.send_text("echo HM-WS-$((6*7))\n")
        seen = b""
        with trio.fail_after(60):
            while b"HM-WS-42" not in seen:
                seen += await ws.receive()
        with pytest.raises(WebsocketRefused) as refused:
            async with Websocket.connect(base, f"/api/v1/vms/{vm_id}/console"):
                pass
        assert refused.value.status == 409
        assert json.loads(refused.value.body)["error"]["code"] == "CONSOLE_BUSY"

    async def logged() -> bool:
        log = await client.get(f"/api/v1/vms/{vm_id}/console/log?tail=2000")
        return any("HM-WS-42" in line for line in (await log.get_json())["lines"])

    # QEMU writes a byte to the socket, then to the log: on a busy host the client
    # can see it first.
    await wait_until_read(logged, True, timeout=10)


async def guest_pid_of_agent(client: Any, vm_id: str) -> str | None:
    status, got = await run(client, vm_id, "?wait_agent=20", command=["pidof", "qemu-ga"])
    return got["stdout"].strip() if status == 200 else None


async def check_agent_restart_and_loss(client: Any, services: Services, vm_id: str) -> None:
    before = await guest_pid_of_agent(client, vm_id)
    assert before
    status, _ = await run(client, vm_id, command=["sh", "-c", RESTART_QGA])
    assert status == 200
    with trio.fail_after(90):
        while await guest_pid_of_agent(client, vm_id) in (None, before):
            await trio.sleep(0.5)
    status, got = await run(client, vm_id, command=["echo", "still here"])
    assert (status, got["stdout"]) == (200, "still here\n"), "works after an agent restart"

    status, _ = await run(client, vm_id, command=["sh", "-c", KILL_QGA])
    assert status == 200
    await wait_until(
        lambda: not services.manager.get(vm_id).guest_agent.connected,
        timeout=60,
        what="the agent loss to be noticed",
    )
    started = trio.current_time()
    status, got = await run(client, vm_id, command=["true"])
    assert (status, got["error"]["code"]) == (409, "GUEST_AGENT_UNAVAILABLE"), got
    assert "qemu-guest-agent" in got["error"]["message"]
    status, got = await run(client, vm_id, "?wait_agent=2", command=["true"])
    assert (status, got["error"]["code"]) == (409, "GUEST_AGENT_UNAVAILABLE"), got
    assert trio.current_time() - started < 10, "no agent answers at once, not after a hang"
    got = await client.get(f"/api/v1/vms/{vm_id}/files?path=/etc/hostname")
    assert got.status_code == 409


def types(messages: list[dict[str, Any]]) -> list[str]:
    return [
        m["event"] + (f":{m['data']['data']['state']}" if m["event"] == "vm.state_changed" else "")
        for m in messages
    ]


async def test_exec_files_console_events_on_one_guest(client: Any, services: Services) -> None:
    async with (
        served(services) as base,
        httpx.AsyncClient(base_url=base, timeout=120) as http,
        trio.open_nursery() as nursery,
    ):
        events = await open_sse(nursery, http, "/api/v1/events")
        body = {"name": "reach", "image": "tiny", "memory_mb": 512, "disk_gb": 1,
                "start": True, "wait": True}  # fmt: skip
        vm = await (await client.post("/api/v1/vms", json=body)).get_json()
        vm_id = vm["id"]
        assert vm["state"] == "running" and vm["guest_agent"] == {
            "connected": False,
            "version": None,
            "reason": None,
            "last_error": None,
        }

        await check_exec(client, vm_id)

        async def agent_shown() -> tuple[bool, str]:
            details = await (await client.get(f"/api/v1/vms/{vm_id}")).get_json()
            shown = details["guest_agent"]
            return shown["connected"], (shown["version"] or "")[:2]

        await wait_until_read(agent_shown, (True, "7."), timeout=10)
        await check_streamed_exec(client, http, vm_id, nursery)
        await check_files(client, vm_id)
        await check_console(client, base, vm_id)
        await check_agent_restart_and_loss(client, services, vm_id)

        stopped = await client.post(f"/api/v1/vms/{vm_id}/stop", json={"force": True, "wait": True})
        assert (await stopped.get_json())["state"] == "stopped"
        status, got = await run(client, vm_id, command=["true"])
        assert (status, got["error"]["code"]) == (409, "INVALID_STATE")
        assert (await client.delete(f"/api/v1/vms/{vm_id}")).status_code == 204

        seen = await events.until(lambda m: m and m[-1]["event"] == "vm.deleted")
        events.close()
        ids = [int(m["id"]) for m in seen]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert all(m["data"]["vm_id"] == vm_id for m in seen)
        life = types(seen)
        assert life[:4] == [
            "vm.created",
            "vm.state_changed:stopped",
            "vm.state_changed:starting",
            "vm.state_changed:running",
        ], life
        assert life[-5:] == [
            "vm.state_changed:stopping",
            "vm.qemu_exited",
            "vm.state_changed:stopped",
            "vm.state_changed:deleting",
            "vm.deleted",
        ], life[-8:]
        assert "guest_agent.connected" in life and "guest_agent.disconnected" in life

        # A client that lost the stream resumes after the last id it saw.
        cut = seen[3]
        resumed = await open_sse(nursery, http, "/api/v1/events", **{"Last-Event-ID": cut["id"]})
        again = await resumed.until(lambda m: len(m) >= len(seen) - 4)
        resumed.close()
        strip = [{k: v for k, v in m.items() if k != "at"} for m in again[: len(seen) - 4]]
        assert strip == [{k: v for k, v in m.items() if k != "at"} for m in seen[4:]]

        # The history of a deleted VM stays readable, filtered to that VM.
        history = await open_sse(nursery, http, f"/api/v1/events?vm_id={vm_id}&after=0")
        replay = await history.until(lambda m: m and m[-1]["event"] == "vm.deleted")
        history.close()
        assert [m["id"] for m in replay] == [m["id"] for m in seen]
        nursery.cancel_scope.cancel()
