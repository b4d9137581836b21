"""RhaiRuntime's Python API: limits, results, failures, caching, threads, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hypermachine.sandbox import HARD_LIMITS, Limits, RhaiRuntime, ScriptFailure

SRC = Path(__file__).resolve().parents[2] / "src"


def test_limits_defaults_within_hard_maximum() -> None:
    limits = Limits()
    for name, hard in HARD_LIMITS.items():
        assert 1 <= getattr(limits, name) <= hard


def test_limits_lowered() -> None:
    base = Limits()
    low = base.lowered(max_operations=10, timeout_ms=5)
    assert (low.max_operations, low.timeout_ms) == (10, 5)
    assert low.max_call_depth == base.max_call_depth
    assert base.max_operations == Limits().max_operations  # frozen, unchanged


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_operations": Limits().max_operations + 1},
        {"timeout_ms": 0},
        {"max_call_depth": -5},
        {"no_such_limit": 1},
        {"memory_bytes": True},
    ],
)
def test_limits_lowered_rejects(overrides: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Limits().lowered(**overrides)


def test_limits_above_hard_maximum_rejected() -> None:
    with pytest.raises(ValueError):
        Limits(max_call_depth=HARD_LIMITS["max_call_depth"] + 1)


def test_result_fields(runtime: RhaiRuntime) -> None:
    res = runtime.run('print("a"); let x = [1, 2.5, "s", \'c\', ()]; x', args={"k": 1})
    assert res.result == [1, 2.5, "s", "c", None]
    assert res.result_type == "array"
    assert res.output == ["a"]
    assert res.operations > 0
    assert res.duration_ms > 0


def test_args_are_a_constant_map(runtime: RhaiRuntime) -> None:
    res = runtime.run("args.name + `:${args.n * 2}`", args={"name": "x", "n": 21})
    assert res.result == "x:42"


def test_syntax_failure_fields(runtime: RhaiRuntime) -> None:
    with pytest.raises(ScriptFailure) as info:
        runtime.run("let x = 1;\nlet = 2;")
    err = info.value
    assert (err.kind, err.line, err.column, err.limit) == ("syntax", 2, 5, None)
    assert "line 2, position 5" in str(err)


def test_runtime_failure_keeps_output(runtime: RhaiRuntime) -> None:
    with pytest.raises(ScriptFailure) as info:
        runtime.run('print("one");\nprint("two");\nthrow "stop";')
    err = info.value
    assert (err.kind, err.line, err.column) == ("runtime", 3, 1)
    assert err.output == ["one", "two"]
    assert "stop" in err.message


def test_on_output_streams(runtime: RhaiRuntime) -> None:
    seen: list[str] = []
    with pytest.raises(ScriptFailure):
        runtime.run(
            'for i in 0..3 { print(i); } throw "x";',
            on_output=seen.append,
        )
    assert seen == ["0", "1", "2"]


def test_concurrent_runs(runtime: RhaiRuntime) -> None:
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for k in range(5):
                res = runtime.run(
                    "let s = 0; for i in 0..args.n { s += i; } print(args.n); s",
                    args={"n": n * 100 + k},
                )
                assert res.output == [str(n * 100 + k)]
                results[n * 100 + k] = res.result
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 20
    for n, total in results.items():
        assert total == n * (n - 1) // 2


def test_timeout_in_one_thread_does_not_affect_another(runtime: RhaiRuntime) -> None:
    box: list[BaseException | object] = []

    def slow() -> None:
        try:
            runtime.run("loop {}", limits=Limits(max_operations=10**9, timeout_ms=200))
        except ScriptFailure as e:
            box.append(e)

    t = threading.Thread(target=slow)
    t.start()
    res = runtime.run("let s = 0; for i in 0..100000 { s += 1; } s")
    t.join()
    assert res.result == 100000
    assert isinstance(box[0], ScriptFailure) and box[0].limit == "timeout_ms"


def test_serialized_module_cache(tmp_path: Path) -> None:
    first = RhaiRuntime(cache_dir=tmp_path)
    files = list(tmp_path.glob("*.cwasm"))
    assert len(files) == 1
    stat = files[0].stat()
    assert first.run("1 + 1").result == 2
    first.close()
    second = RhaiRuntime(cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == stat.st_mtime_ns  # reused, not rewritten
    assert second.run("2 + 2").result == 4
    second.close()


def test_corrupt_cache_is_replaced(tmp_path: Path) -> None:
    RhaiRuntime(cache_dir=tmp_path).close()
    (cached,) = tmp_path.glob("*.cwasm")
    cached.write_bytes(b"garbage")
    rt = RhaiRuntime(cache_dir=tmp_path)
    assert rt.run("3").result == 3
    assert cached.read_bytes() != b"garbage"
    rt.close()


@pytest.fixture(scope="module")
def cli_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


def _cli(cache: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "hypermachine.sandbox", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_success(tmp_path: Path, cli_cache: Path) -> None:
    script = tmp_path / "hello.rhai"
    script.write_text('print("hi " + args.who);\n#{answer: 42}\n')
    proc = _cli(cli_cache, str(script), "--args", '{"who": "there"}')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "hi there"
    assert json.loads(lines[-1]) == {"result": {"answer": 42}, "type": "map"}


def test_cli_failure(tmp_path: Path, cli_cache: Path) -> None:
    script = tmp_path / "bad.rhai"
    script.write_text('print("before");\nlet x = 1 / 0;\n')
    proc = _cli(cli_cache, str(script))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == ["before"]
    assert "Division by zero" in proc.stderr
    assert "line 2" in proc.stderr


def test_memory_limit_too_small_to_start(runtime: RhaiRuntime) -> None:
    with pytest.raises(ScriptFailure) as info:
        runtime.run("1", limits=Limits(memory_bytes=1024 * 1024))
    assert (info.value.kind, info.value.limit) == ("limit", "memory_bytes")


def test_unexpected_host_exception_propagates(runtime: RhaiRuntime) -> None:
    def broken(request: dict[str, object]) -> object:
        raise KeyError("bug in host")

    with pytest.raises(KeyError):
        runtime.run("try { boom() } catch { 0 }", functions=("boom",), host_call=broken)
    # the runtime is still usable afterwards
    assert runtime.run("1 + 1").result == 2
