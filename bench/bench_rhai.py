"""Benchmark the sandboxed Rhai interpreter (rhai.wasm in Wasmtime).

Run: ``.venv/bin/python bench/bench_rhai.py``. Prints, for each case, the best of
a few runs, the target and the ratio (measured / target; <= 1.0 meets it). Native
Rhai is not run here: its figures are the ones published in issue 15, printed as such.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hypermachine.sandbox import Limits, RhaiRuntime

LOOP = "let x = 1_000_000; while x > 0 { x -= 1; } x"
FIB = "fn fib(n) { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } } fib(25)"
TRIVIAL = "40 + 2"
PUBLISHED = "native Rhai 1.26, as reported in issue 15 (not measured here)"


@dataclass(frozen=True)
class Case:
    name: str
    target_s: float
    note: str
    measure: Callable[[], float]


def best_of(n: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(n))


def main() -> int:
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        runtime = RhaiRuntime(cache_dir=Path(cache))
        compile_s = time.perf_counter() - started
        started = time.perf_counter()
        RhaiRuntime(cache_dir=Path(cache)).close()
        cached_s = time.perf_counter() - started
        limits = Limits(max_operations=1_000_000_000, timeout_ms=60_000)

        def timed(code: str, expect: object) -> Callable[[], float]:
            def run() -> float:
                t0 = time.perf_counter()
                res = runtime.run(code, limits=limits)
                elapsed = time.perf_counter() - t0
                assert res.result == expect, res.result
                return elapsed

            return run

        cases = [
            Case(
                "loop 1,000,000 (while x > 0 { x -= 1 })",
                0.3,
                f"{PUBLISHED}: 0.17 s",
                timed(LOOP, 0),
            ),
            Case("fib(25) recursive", 1.0, f"{PUBLISHED}: 0.15 s", timed(FIB, 75025)),
            Case("cold start: trivial script, fresh instance", 0.05, "", timed(TRIVIAL, 42)),
        ]
        print(f"module compile: {compile_s:.3f} s; load from serialized cache: {cached_s:.3f} s")
        print(f"{'case':48} {'time':>9} {'target':>8} {'ratio':>6}")
        worst = 0.0
        for case in cases:
            t = best_of(3, case.measure)
            ratio = t / case.target_s
            worst = max(worst, ratio)
            flag = "ok" if ratio <= 1.0 else "SLOW"
            note = f"  ({case.note})" if case.note else ""
            print(f"{case.name:48} {t:8.3f}s {case.target_s:7.2f}s {ratio:6.2f} {flag}{note}")
        runtime.close()
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
