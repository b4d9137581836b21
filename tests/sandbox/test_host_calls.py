"""Host objects and functions through a fake host_call callback."""

from __future__ import annotations

from typing import Any

import pytest

from hypermachine.sandbox import HostCallError, HostObject, RhaiRuntime, ScriptFailure

VM = HostObject(
    type_name="VM",
    properties=("state", "name", "memory_mb"),
    methods=("start", "stop", "wait_for", "exec"),
)


class FakeHost:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.state = "stopped"

    def __call__(self, request: dict[str, Any]) -> object:
        self.calls.append(request)
        if request.get("object") == "vm":
            if request.get("property") == "state":
                if "value" in request:
                    raise HostCallError("state is read-only")
                return self.state
            if request.get("property") == "name":
                return "web-1"
            if request.get("property") == "memory_mb":
                return 2048
            method = request.get("method")
            if method == "start":
                self.state = "running"
                return None
            if method == "stop":
                if self.state != "running":
                    raise HostCallError("VM is not running")
                self.state = "stopped"
                return {"stopped": True, "forced": request["args"][0].get("force", False)}
            if method == "wait_for":
                return self.state == request["args"][0]
            if method == "exec":
                return {"exit_code": 0, "stdout": "hello\n", "timings": [1.5, 2]}
        if request.get("function") == "notify":
            return len(request["args"])
        if request.get("function") == "explode":
            raise HostCallError("kaboom")
        if request.get("function") == "bad_value":
            return object()
        raise HostCallError(f"unexpected request {request}")


def run(runtime: RhaiRuntime, code: str, host: FakeHost | None = None) -> Any:
    host = host or FakeHost()
    return runtime.run(
        code,
        objects={"vm": VM},
        functions=("notify", "explode", "bad_value"),
        host_call=host,
    )


def test_property_get(runtime: RhaiRuntime) -> None:
    host = FakeHost()
    res = run(runtime, "vm.state", host)
    assert (res.result, res.result_type) == ("stopped", "string")
    assert host.calls == [{"object": "vm", "property": "state"}]


def test_methods_and_args(runtime: RhaiRuntime) -> None:
    host = FakeHost()
    code = """
        vm.start();
        let ok = vm.wait_for("running", 5000);
        let r = vm.stop(#{force: true});
        [ok, r.stopped, r.forced, vm.state]
    """
    res = run(runtime, code, host)
    assert res.result == [True, True, True, "stopped"]
    assert host.calls == [
        {"object": "vm", "method": "start", "args": []},
        {"object": "vm", "method": "wait_for", "args": ["running", 5000]},
        {"object": "vm", "method": "stop", "args": [{"force": True}]},
        {"object": "vm", "property": "state"},
    ]


def test_host_function(runtime: RhaiRuntime) -> None:
    host = FakeHost()
    res = run(runtime, 'notify("a", 2, [3.5], ())', host)
    assert res.result == 4
    assert host.calls == [{"function": "notify", "args": ["a", 2, [3.5], None]}]


def test_type_of_host_object(runtime: RhaiRuntime) -> None:
    assert run(runtime, "type_of(vm)").result == "VM"


def test_response_conversion(runtime: RhaiRuntime) -> None:
    code = """
        let r = vm.exec("echo hello");
        [type_of(r), type_of(r.exit_code), type_of(r.timings[0]), type_of(r.timings[1]),
         r.stdout.trim_end_value()]
    """
    with pytest.raises(ScriptFailure):
        run(runtime, code)  # trim_end_value does not exist: a plain runtime error
    code = """
        let r = vm.exec("echo hello");
        [type_of(r), type_of(r.exit_code), type_of(r.timings[0]), type_of(r.timings[1])]
    """
    assert run(runtime, code).result == ["map", "i64", "f64", "i64"]


def test_host_error_is_catchable(runtime: RhaiRuntime) -> None:
    code = """
        let r = "no error"; try { vm.stop(#{}); } catch (e) { r = e.message } r
    """
    assert run(runtime, code).result == "VM is not running"


def test_host_error_uncaught(runtime: RhaiRuntime) -> None:
    with pytest.raises(ScriptFailure) as info:
        run(runtime, 'print("x");\nexplode()')
    err = info.value
    assert (err.kind, err.message, err.line, err.limit) == ("runtime", "kaboom", 2, None)
    assert err.output == ["x"]


def test_host_value_not_json(runtime: RhaiRuntime) -> None:
    res = run(runtime, "let r; try { bad_value() } catch (e) { r = e.message } r")
    assert "not JSON" in res.result


def test_undeclared_member_never_reaches_host(runtime: RhaiRuntime) -> None:
    host = FakeHost()
    with pytest.raises(ScriptFailure) as info:
        run(runtime, "vm.secret", host)
    assert "Property not found: secret" in info.value.message
    with pytest.raises(ScriptFailure) as info:
        run(runtime, "vm.reformat()", host)
    assert "Function not found: reformat" in info.value.message
    assert host.calls == []


def test_property_set_goes_to_host(runtime: RhaiRuntime) -> None:
    host = FakeHost()
    res = run(runtime, 'let r = 0; try { vm.state = "x"; } catch (e) { r = e.message } r', host)
    assert res.result == "state is read-only"
    assert host.calls == [{"object": "vm", "property": "state", "value": "x"}]


def test_host_objects_visible_in_functions(runtime: RhaiRuntime) -> None:
    res = run(runtime, "fn mem() { vm.memory_mb / 1024 }\nmem()")
    assert res.result == 2


def test_host_object_passed_as_value(runtime: RhaiRuntime) -> None:
    res = run(runtime, "let v = vm; let vs = [v]; vs[0].name")
    assert res.result == "web-1"


def test_no_host_handler(runtime: RhaiRuntime) -> None:
    with pytest.raises(ScriptFailure) as info:
        runtime.run("notify(1)", functions=("notify",))
    assert "no host handler" in info.value.message


def test_undeclared_function_is_not_forwarded(runtime: RhaiRuntime) -> None:
    host = FakeHost()
    with pytest.raises(ScriptFailure) as info:
        runtime.run("launch_missiles()", host_call=host)
    assert "Function not found: launch_missiles" in info.value.message
    assert host.calls == []


def test_sleep_is_builtin(runtime: RhaiRuntime) -> None:
    host = FakeHost()
    res = runtime.run("sleep(20); sleep(0); 1", host_call=host)
    assert res.result == 1
    assert res.duration_ms >= 20
    assert host.calls == []


def test_sleep_rejects_bad_argument(runtime: RhaiRuntime) -> None:
    with pytest.raises(ScriptFailure) as info:
        runtime.run('sleep("long")')
    assert info.value.kind == "runtime"


def test_host_calls_count_as_operations(runtime: RhaiRuntime) -> None:
    from hypermachine.sandbox import Limits

    host = FakeHost()
    with pytest.raises(ScriptFailure) as info:
        runtime.run(
            "loop { vm.state; }",
            objects={"vm": VM},
            host_call=host,
            limits=Limits().lowered(max_operations=300),
        )
    assert info.value.limit == "max_operations"
    assert 0 < len(host.calls) < 300


def test_host_function_in_method_style(runtime: RhaiRuntime) -> None:
    host = FakeHost()
    res = run(runtime, '"hello".notify(1)', host)
    assert res.result == 2
    assert host.calls == [{"function": "notify", "args": ["hello", 1]}]
