"""Run a Rhai script locally: ``python -m hypermachine.sandbox FILE [--args JSON]``.

Prints the script's output lines, then the result as one JSON line
(``{"result": ..., "type": ...}``). On failure prints the error to stderr and
exits with status 1. No VM is involved: host objects are not available.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from hypermachine.sandbox.runtime import Limits, RhaiRuntime, ScriptFailure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hypermachine.sandbox", description=__doc__)
    parser.add_argument("file", type=Path, help="Rhai script to run ('-' for stdin)")
    parser.add_argument("--args", default="{}", help="JSON object visible as `args`")
    parser.add_argument("--timeout-ms", type=int, default=None, help="lower the timeout")
    parser.add_argument("--max-operations", type=int, default=None, help="lower the op limit")
    ns = parser.parse_args(argv)
    code = sys.stdin.read() if str(ns.file) == "-" else ns.file.read_text(encoding="utf-8")
    try:
        args = json.loads(ns.args)
    except json.JSONDecodeError as e:
        parser.error(f"--args is not JSON: {e}")
    if not isinstance(args, dict):
        parser.error("--args must be a JSON object")
    overrides = {
        k: v
        for k, v in (("timeout_ms", ns.timeout_ms), ("max_operations", ns.max_operations))
        if v is not None
    }
    try:
        limits = Limits().lowered(**overrides)
    except ValueError as e:
        parser.error(str(e))
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hypermachine"
    runtime = RhaiRuntime(cache_dir=cache / "rhai")

    def echo(line: str) -> None:
        print(line, flush=True)

    try:
        res = runtime.run(code, args=args, limits=limits, on_output=echo)
    except ScriptFailure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    print(json.dumps({"result": res.result, "type": res.result_type}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
