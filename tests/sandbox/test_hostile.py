"""Hostile scripts: each must end with its own limit's error, quickly and cleanly."""

from __future__ import annotations

import time

import pytest
import wasmtime

from hypermachine.sandbox import Limits, RhaiRuntime, ScriptFailure
from hypermachine.sandbox.runtime import WASM_PATH

FAST = Limits(timeout_ms=5_000)


def fail(runtime: RhaiRuntime, code: str, limits: Limits = FAST) -> ScriptFailure:
    with pytest.raises(ScriptFailure) as info:
        runtime.run(code, limits=limits)
    return info.value


def test_infinite_loop_hits_operation_limit(runtime: RhaiRuntime) -> None:
    err = fail(runtime, "let x = 0; loop { x += 1; }", FAST.lowered(max_operations=200_000))
    assert (err.kind, err.limit) == ("limit", "max_operations")
    assert "max_operations" in err.message


def test_infinite_loop_hits_timeout(runtime: RhaiRuntime) -> None:
    limits = Limits(max_operations=1_000_000_000, timeout_ms=300)
    started = time.monotonic()
    err = fail(runtime, "loop { }", limits)
    elapsed = time.monotonic() - started
    assert (err.kind, err.limit) == ("limit", "timeout_ms")
    assert 0.25 <= elapsed < 2.0


def test_empty_while_true_hits_timeout(runtime: RhaiRuntime) -> None:
    limits = Limits(max_operations=1_000_000_000, timeout_ms=200)
    err = fail(runtime, "while true { }", limits)
    assert err.limit == "timeout_ms"


def test_output_before_timeout_survives(runtime: RhaiRuntime) -> None:
    limits = Limits(max_operations=1_000_000_000, timeout_ms=200)
    err = fail(runtime, 'print("before"); debug(1); loop { }', limits)
    assert err.limit == "timeout_ms"
    assert err.output == ["before", "1"]


def test_deep_recursion(runtime: RhaiRuntime) -> None:
    err = fail(runtime, "fn f(n) { f(n + 1) } f(0)")
    assert (err.kind, err.limit) == ("limit", "max_call_depth")


def test_deep_recursion_at_hard_maximum(runtime: RhaiRuntime) -> None:
    limits = Limits(max_call_depth=256, max_expr_depth=256)
    err = fail(runtime, "fn f(n) { [1].map(|x| f(n + x)) } f(0)", limits)
    assert err.limit == "max_call_depth"


def test_deeply_nested_blocks_in_recursion(runtime: RhaiRuntime) -> None:
    body = "1 + f(n + 1)"
    for _ in range(4):
        loop_ = f"while true {{ for i in 0..1 {{ return {body}; }} }}"
        body = f"switch n {{ _ => {{ if true {{ {loop_} }} }} }}"
    limits = Limits(max_call_depth=256, max_expr_depth=256)
    err = fail(runtime, f"fn f(n) {{ {body} }} f(0)", limits)
    assert (err.kind, err.limit) == ("limit", "max_call_depth")


def test_recursion_through_eval(runtime: RhaiRuntime) -> None:
    err = fail(runtime, 'fn f(n) { eval("f(n + 1)") } f(0)')
    assert err.limit == "max_call_depth"


def test_deep_expression_nesting(runtime: RhaiRuntime) -> None:
    err = fail(runtime, "let x = " + "(" * 5000 + "1" + ")" * 5000 + ";")
    assert (err.kind, err.limit) == ("syntax", "max_expr_depth")
    err = fail(runtime, "let x = " + "-" * 5000 + "1;")
    assert err.limit == "max_expr_depth"
    err = fail(runtime, "let x = " + "[" * 5000 + "]" * 5000 + ";")
    assert err.limit == "max_expr_depth"


def test_exponential_string_growth(runtime: RhaiRuntime) -> None:
    err = fail(runtime, 'let s = "ab"; loop { s += s; }')
    assert (err.kind, err.limit) == ("limit", "max_string_size")


def test_exponential_string_growth_via_interpolation(runtime: RhaiRuntime) -> None:
    err = fail(runtime, 'let s = "ab"; loop { s = `${s}${s}`; }')
    assert err.limit == "max_string_size"


def test_exponential_array_growth(runtime: RhaiRuntime) -> None:
    err = fail(runtime, "let a = [1]; loop { a += a; }")
    assert (err.kind, err.limit) == ("limit", "max_array_size")


def test_nested_sharing_bomb_cannot_be_printed(runtime: RhaiRuntime) -> None:
    err = fail(runtime, "let a = [1]; for i in 0..60 { a = [a, a]; } print(a);")
    assert err.limit == "max_string_size"


def test_nested_sharing_bomb_as_result(runtime: RhaiRuntime) -> None:
    err = fail(runtime, "let a = [1]; for i in 0..60 { a = [a, a]; } a")
    assert err.limit == "max_string_size"


def test_map_growth(runtime: RhaiRuntime) -> None:
    err = fail(runtime, "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }")
    assert err.limit == "max_map_size"


def test_output_flood(runtime: RhaiRuntime) -> None:
    limits = FAST.lowered(max_output_bytes=10_000)
    err = fail(runtime, "let s = \"x\"; s.pad(99, 'x'); loop { print(s); }", limits)
    assert (err.kind, err.limit) == ("limit", "max_output_bytes")
    assert 0 < sum(len(line) + 1 for line in err.output) <= 10_000


def test_huge_string_literal(runtime: RhaiRuntime) -> None:
    err = fail(runtime, 'let s = "' + "x" * 2_000_000 + '"; s.len()')
    assert (err.kind, err.limit) == ("syntax", "max_string_size")


def test_huge_array_literal(runtime: RhaiRuntime) -> None:
    limits = FAST.lowered(max_array_size=1000)
    err = fail(runtime, "let a = [" + "1," * 5000 + "];", limits)
    assert err.limit == "max_array_size"


def test_memory_bomb_distinct_strings(runtime: RhaiRuntime) -> None:
    limits = FAST.lowered(memory_bytes=32 * 1024 * 1024)
    code = """
        let a = [];
        for i in 0..90000 {
            let s = `${i}`;
            s.pad(1000, 'y');
            a.push(s);
        }
        a.len()
    """
    err = fail(runtime, code, limits)
    assert (err.kind, err.limit) == ("limit", "memory_bytes")


def test_memory_bomb_blob(runtime: RhaiRuntime) -> None:
    limits = Limits(memory_bytes=16 * 1024 * 1024, max_array_size=10_000_000)
    err = fail(runtime, "let bs = []; loop { bs.push(blob(5000000)); }", limits)
    assert err.limit == "memory_bytes"


def test_sleep_past_deadline_is_interrupted(runtime: RhaiRuntime) -> None:
    started = time.monotonic()
    err = fail(runtime, "sleep(60000);", Limits(timeout_ms=300))
    assert (err.kind, err.limit) == ("limit", "timeout_ms")
    assert time.monotonic() - started < 1.5


def test_many_short_sleeps_reach_deadline(runtime: RhaiRuntime) -> None:
    err = fail(runtime, "loop { sleep(50); }", Limits(timeout_ms=300))
    assert err.limit == "timeout_ms"


def test_limits_are_not_catchable(runtime: RhaiRuntime) -> None:
    code = 'try { let s = "x"; loop { s += s; } } catch { 42 }'
    err = fail(runtime, code)
    assert err.limit == "max_string_size"


def test_script_cannot_reach_the_system(runtime: RhaiRuntime) -> None:
    attempts = [
        'import "std" as s;',
        'open("/etc/passwd")',
        "fd_write(1, 0, 0, 0)",
        'Fn("fd_write").call(1, 0, 0, 0)',
        'Fn("proc_exit").call(0)',
        "environ_get(0, 0)",
        'env("HOME")',
        'exec("ls")',
        'eval("system(\\"id\\")")',
        'fs::read("/etc/passwd")',
        "random_get(0, 8)",
    ]
    for code in attempts:
        err = fail(runtime, code)
        assert err.kind in ("runtime", "syntax"), (code, err)
        assert err.limit is None


def test_module_has_no_wasi_capabilities(runtime: RhaiRuntime) -> None:
    # runtime.imports comes straight from the compiled rhai.wasm module.
    wasi = [name for module, name in runtime.imports if module == "wasi_snapshot_preview1"]
    others = {module for module, _ in runtime.imports} - {"wasi_snapshot_preview1", "hm"}
    assert not others
    # Only what Rust's std start-up/panic path references; nothing for files,
    # sockets, clocks, args or randomness.
    assert set(wasi) <= {"fd_write", "environ_get", "environ_sizes_get", "proc_exit"}
    assert WASM_PATH.read_bytes()[:4] == b"\0asm"


def test_every_wasi_stub_refuses(runtime: RhaiRuntime) -> None:
    engine = runtime._engine  # import types belong to the runtime's engine
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1_000_000)
    checked = 0
    for module, name, ty in runtime._imports:
        if module != "wasi_snapshot_preview1":
            continue
        assert isinstance(ty, wasmtime.FuncType)
        # A tiny module that exports memory and calls the stub with pointers into it,
        # so stubs that want the caller's memory get a real one.
        params = " ".join(str(p) for p in ty.params)
        results = " ".join(str(r) for r in ty.results)
        args = " ".join(f"(i32.const {8 * k})" for k in range(len(ty.params)))
        ret = "" if results else "(i32.const 0)"
        wat = f"""
        (module
          (import "w" "f" (func $f (param {params}) (result {results})))
          (memory (export "memory") 1)
          (func (export "go") (result i32) {args} (call $f) {ret}))
        """.replace("(param )", "").replace("(result )", "")
        probe = wasmtime.Module(engine, wat)
        linker = wasmtime.Linker(engine)
        linker.define(store, "w", "f", runtime._wasi_stub(store, name, ty))
        exports = linker.instantiate(store, probe).exports(store)
        go, mem = exports["go"], exports["memory"]
        assert isinstance(go, wasmtime.Func) and isinstance(mem, wasmtime.Memory)
        if name == "proc_exit":
            with pytest.raises(wasmtime.Trap):
                go(store)
            continue
        before = bytes(mem.read(store, 0, 4096))
        result = go(store)
        after = bytes(mem.read(store, 0, 4096))
        if name in ("environ_sizes_get", "environ_get"):
            assert result == 0  # an empty environment: zero variables, zero bytes
            assert after == before  # memory starts zeroed; only zeros were written
        else:
            assert result == 52  # ENOSYS
            assert after == before  # nothing was written anywhere
        checked += 1
    assert checked >= 1


def test_fresh_instance_per_run(runtime: RhaiRuntime) -> None:
    runtime.run("let leaked = 42;")
    err = fail(runtime, "leaked")
    assert "Variable not found" in err.message


@pytest.mark.parametrize(
    "code",
    [
        "let x = 1" + " + 1" * 100_000 + ";",
        "let x = true" + " && true" * 50_000 + ";",
        "let x = ()" + " ?? ()" * 50_000 + ";",
        "let m = #{}; m" + ".a" * 10_000,
        "let a = [1]; a" + "[0]" * 10_000,
        'let s = "a"' + ".to_upper()" * 10_000,
        "let x = 1; " + "if x == 0 { 0 } else " * 5_000 + "{ 1 }",
    ],
    ids=["plus", "and", "coalesce", "props", "index", "methods", "else-if"],
)
def test_long_chains_hit_expression_depth(runtime: RhaiRuntime, code: str) -> None:
    err = fail(runtime, code)
    assert (err.kind, err.limit) == ("syntax", "max_expr_depth")


def test_long_chains_within_limits_still_work(runtime: RhaiRuntime) -> None:
    limits = Limits(max_call_depth=256, max_expr_depth=256)
    assert runtime.run("let x = 1" + " + 1" * 2000 + "; x", limits=limits).result == 2001
    code = "let x = 1; " + "if x == 0 { 0 } else " * 2000 + "{ 7 }"
    assert runtime.run(code, limits=limits).result == 7
