"""``hypermachine script run FILE [--vm ID]``: run a Rhai script from the command line.

Without ``--vm`` the script runs locally in the sandbox with no VM bound (handy for
writing scripts); with ``--vm`` it is sent to the server and runs bound to that VM,
exactly as ``POST /api/v1/vms/{id}/script`` would run it.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["run_script_file"]


def _print_outcome(body: dict[str, Any]) -> None:
    for line in body.get("output") or []:
        print(line)
    print(json.dumps({"result": body.get("result"), "type": body.get("result_type")}))


def _run_on_server(code: str, vm_id: str, server: str, args: dict[str, object]) -> int:
    request = urllib.request.Request(
        f"{server.rstrip('/')}/api/v1/vms/{vm_id}/script",
        data=json.dumps({"language": "rhai", "code": code, "args": args}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            _print_outcome(json.load(response))
            return 0
    except urllib.error.HTTPError as err:
        error = json.load(err).get("error", {})
        for line in (error.get("details") or {}).get("output") or []:
            print(line)
        print(f"error: {error.get('code')}: {error.get('message')}", file=sys.stderr)
        return 1
    except urllib.error.URLError as err:
        print(f"error: cannot reach {server}: {err.reason}", file=sys.stderr)
        return 2


def run_script_file(
    path: Path, *, vm_id: str | None, server: str, args: dict[str, object] | None = None
) -> int:
    if vm_id is None:
        from .sandbox.__main__ import main as run_locally

        return run_locally([str(path), "--args", json.dumps(args or {})])
    code = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    return _run_on_server(code, vm_id, server, args or {})
