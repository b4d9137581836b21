"""``POST /api/v1/vms/{id}/script``: Rhai in the sandbox, bound to a real VM."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from hostile import HOSTILE_BODIES


async def make_vm(client: Any, name: str = "scripted") -> str:
    body = {"name": name, "image": "tiny", "memory_mb": 512, "disk_gb": 1, "wait": True}
    response = await client.post("/api/v1/vms", json=body)
    assert response.status_code == 201
    return str((await response.get_json())["id"])


async def run(client: Any, vm_id: str, code: str, **extra: Any) -> tuple[int, Any]:
    body = {"language": "rhai", "code": code, **extra}
    response = await client.post(f"/api/v1/vms/{vm_id}/script", json=body)
    return response.status_code, await response.get_json()


async def test_hello(client: Any) -> None:
    vm_id = await make_vm(client)
    status, body = await run(client, vm_id, 'print("Hello from HyperMachine!");')
    assert status == 200, body
    assert body["output"] == ["Hello from HyperMachine!"]
    assert body["result"] is None and body["result_type"] == "()"
    assert body["operations"] > 0 and body["duration_ms"] >= 0


async def test_result_json_and_args(client: Any) -> None:
    vm_id = await make_vm(client)
    code = "let m = #{n: args.n * 2, s: `id=${vm.id}`, xs: [1, 2.5, true, 'c']}; m"
    status, body = await run(client, vm_id, code, args={"n": 21})
    assert status == 200, body
    assert body["result"] == {"n": 42, "s": f"id={vm_id}", "xs": [1, 2.5, True, "c"]}
    assert body["result_type"] == "map"
    status, body = await run(client, vm_id, "vm.state + ' ' + vm.name")
    assert body["result"] == "stopped scripted"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"language": "python", "code": "1"}, 400, "UNSUPPORTED_LANGUAGE"),
        ({"language": "rhai", "code": "let x = ;"}, 400, "SCRIPT_SYNTAX_ERROR"),
        ({"language": "rhai", "code": "let x = 1; x / 0"}, 422, "SCRIPT_RUNTIME_ERROR"),
        ({"language": "rhai", "code": 'throw "boom";'}, 422, "SCRIPT_RUNTIME_ERROR"),
        ({"language": "rhai", "code": "loop {}", "limits": {"max_operations": 10000}}, 422,
         "SCRIPT_LIMIT_EXCEEDED"),
        ({"language": "rhai", "code": "1", "limits": {"timeout_ms": 10**9}}, 400,
         "VALIDATION_ERROR"),
        ({"language": "rhai", "code": "1", "limits": {"bogus": 1}}, 400, "VALIDATION_ERROR"),
        ({"language": "rhai"}, 400, "VALIDATION_ERROR"),
        ({"language": "rhai", "code": "1", "extra": True}, 400, "VALIDATION_ERROR"),
    ],
    ids=["language", "syntax", "div-zero", "throw", "ops-limit", "raise-limit", "bad-limit",
         "no-code", "unknown-field"],
)  # fmt: skip
async def test_errors(client: Any, body: dict[str, Any], status: int, code: str) -> None:
    vm_id = await make_vm(client)
    response = await client.post(f"/api/v1/vms/{vm_id}/script", json=body)
    answer = await response.get_json()
    assert response.status_code == status, answer
    assert answer["error"]["code"] == code


async def test_error_details_carry_position_and_output(client: Any) -> None:
    vm_id = await make_vm(client)
    status, body = await run(client, vm_id, 'print("before");\nlet y = 1 +;\n')
    assert status == 400
    assert body["error"]["details"]["line"] == 2
    status, body = await run(client, vm_id, 'print("before");\nthrow "after";')
    assert status == 422
    assert body["error"]["details"]["output"] == ["before"]


async def test_unknown_vm(client: Any) -> None:
    status, body = await run(client, "vm-000000000000", "1")
    assert status == 404 and body["error"]["code"] == "VM_NOT_FOUND"


async def test_health_answers_while_a_script_spins(client: Any) -> None:
    vm_id = await make_vm(client)
    outcome: dict[str, Any] = {}

    async def spin() -> None:
        outcome["spin"] = await run(client, vm_id, "loop {}", limits={"timeout_ms": 3000})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(spin)
        await trio.sleep(0)  # let the script request get going (ordering only)
        answered = 0
        with trio.fail_after(2.5):
            while "spin" not in outcome and answered < 5:
                response = await client.get("/health")
                assert response.status_code == 200
                answered += 1
    status, body = outcome["spin"]
    assert status == 422
    assert body["error"]["details"]["limit"] in ("timeout_ms", "max_operations")
    assert answered == 5


async def test_script_drives_a_real_vm(client: Any) -> None:
    vm_id = await make_vm(client)
    code = """
        let seen = [];
        vm.start();
        vm.wait_for("running", 60000);
        seen.push(vm.state);
        vm.pause();
        seen.push(vm.qmp("query-status", #{}).status);
        vm.resume();
        let m = vm.metrics();
        seen.push(m.vcpus);
        let refused = "allowed";
        try { vm.qmp("migrate", #{uri: "exec:touch /tmp/pwned"}); }
        catch (e) { refused = "refused"; }
        seen.push(refused);
        vm.stop(#{force: true});
        vm.wait_for("stopped", 30000);
        seen.push(vm.state);
        seen
    """
    status, body = await run(client, vm_id, code, limits={"timeout_ms": 120000})
    assert status == 200, body
    assert body["result"] == ["running", "paused", 1, "refused", "stopped"]


async def test_host_errors_are_catchable(client: Any) -> None:
    vm_id = await make_vm(client)
    code = 'let r = "paused?"; try { vm.pause(); } catch (e) { r = `caught: ${e}`; } r'
    status, body = await run(client, vm_id, code)
    assert status == 200, body
    assert body["result"].startswith("caught:") and "INVALID_STATE" in body["result"]


@pytest.mark.parametrize("row", HOSTILE_BODIES[:8], ids=[r[0] for r in HOSTILE_BODIES[:8]])
async def test_hostile_names_cannot_create_through_scripts(client: Any, row: Any) -> None:
    """Scripts have no create call at all: a hostile spec has nowhere to go."""
    vm_id = await make_vm(client)
    status, body = await run(client, vm_id, "vm.create(args)", args={"spec": row[1]})
    assert status == 422
    assert body["error"]["code"] == "SCRIPT_RUNTIME_ERROR"


async def test_script_reaches_into_the_guest(client: Any) -> None:
    vm_id = await make_vm(client, "guesty")
    code = """
        vm.start();
        vm.wait_for("running", 60000);
        let r = vm.exec(["/bin/echo", "hello", "guest"]);
        vm.write_file("/tmp/hm-note", `written by ${vm.name}`);
        let back = vm.read_file("/tmp/hm-note");
        let sh = vm.exec("echo $((6 * 7))");
        let bad = "";
        try { vm.exec([]); } catch (e) { bad = "refused"; }
        [r.exit_code, r.stdout, back, sh.stdout, bad]
    """
    status, body = await run(client, vm_id, code, limits={"timeout_ms": 150000})
    assert status == 200, body
    assert body["result"] == [0, "hello guest\n", "written by guesty", "42\n", "refused"]


async def test_script_outcomes_are_counted_for_prometheus(client: Any) -> None:
    vm_id = await make_vm(client, "counted")
    await run(client, vm_id, "1")
    await run(client, vm_id, "let x = ;")
    await run(client, vm_id, 'throw "no";')
    text = (await (await client.get("/metrics")).get_data()).decode()
    counts = {
        line.split('outcome="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("hypermachine_script_runs_total{")
    }
    assert counts == {"ok": 1.0, "syntax_error": 1.0, "runtime_error": 1.0}
