"""Conformance suite: every tests/rhai/*.rhai file runs through the real rhai.wasm.

Each file starts with header comments::

    // expect: <JSON of the result>       (and optionally)  // type: <type_of name>
    // output: <one printed line>          (repeatable, in order; omitted = no check)
    // error: syntax|runtime|limit         // message: <fragment>   // at: LINE:COL
    // limit: <limit name>                 // limits: {"max_operations": 100}
    // args: {"x": 1}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hypermachine.sandbox import Limits, RhaiRuntime, ScriptFailure

RHAI_CASES = Path(__file__).resolve().parent.parent / "rhai"

_MISSING = object()


@dataclass
class Case:
    path: Path
    code: str
    expect: Any = _MISSING
    type_name: str | None = None
    output: list[str] | None = None
    error: str | None = None
    message: str | None = None
    at: tuple[int, int] | None = None
    limit: str | None = None
    limits: dict[str, int] = field(default_factory=dict)
    args: dict[str, Any] = field(default_factory=dict)


def parse_case(path: Path) -> Case:
    code = path.read_text(encoding="utf-8")
    case = Case(path=path, code=code)
    for line in code.splitlines():
        if not line.startswith("// "):
            break
        key, sep, value = line[3:].partition(":")
        if not sep:
            continue
        value = value[1:] if value.startswith(" ") else value
        match key.strip():
            case "expect":
                case.expect = json.loads(value)
            case "type":
                case.type_name = value
            case "output":
                case.output = [*(case.output or []), value]
            case "no-output":
                case.output = []
            case "error":
                case.error = value.strip()
            case "message":
                case.message = value
            case "at":
                line_no, col = value.split(":")
                case.at = (int(line_no), int(col))
            case "limit":
                case.limit = value.strip()
            case "limits":
                case.limits = json.loads(value)
            case "args":
                case.args = json.loads(value)
    if case.expect is _MISSING and case.error is None:
        raise ValueError(f"{path.name}: no '// expect:' or '// error:' header")
    return case


CASE_FILES = sorted(RHAI_CASES.glob("*.rhai"))


def test_suite_is_large() -> None:
    assert len(CASE_FILES) >= 200


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_rhai_case(runtime: RhaiRuntime, path: Path) -> None:
    case = parse_case(path)
    limits = Limits().lowered(**case.limits) if case.limits else Limits()
    if case.error is None:
        try:
            res = runtime.run(case.code, args=case.args, limits=limits)
        except ScriptFailure as e:
            pytest.fail(f"unexpected failure: {e} output={e.output}")
        assert res.result == case.expect, f"result {res.result!r} != {case.expect!r}"
        if case.type_name is not None:
            assert res.result_type == case.type_name
        if case.output is not None:
            assert res.output == case.output
        return
    with pytest.raises(ScriptFailure) as info:
        runtime.run(case.code, args=case.args, limits=limits)
    err = info.value
    assert err.kind == case.error, f"kind {err.kind} != {case.error}: {err}"
    if case.message is not None:
        assert case.message in err.message, f"{case.message!r} not in {err.message!r}"
    if case.at is not None:
        assert (err.line, err.column) == case.at, f"position {err.line}:{err.column} != {case.at}"
    if case.limit is not None:
        assert err.limit == case.limit
    if case.output is not None:
        assert err.output == case.output
