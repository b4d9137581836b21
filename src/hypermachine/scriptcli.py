"""``hypermachine script run FILE [--vm ID]``: run a Rhai script from the command line.

Without ``--vm`` the script runs locally in the sandbox with no VM bound (handy for
writing scripts); with ``--vm`` it is sent to the server and runs bound to that VM,
exactly as ``POST /api/v1/vms/{id}/script`` would run it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["run_script_file"]


def _run_on_server(path: Path, vm_id: str, server: str, args: dict[str, object]) -> int:
    """Through the SDK, as ``hypermachine vm script VM FILE`` runs it."""
    from .vmcli.run import run

    return run(
        argparse.Namespace(
            handler="guest.run_script", vm=vm_id, file=str(path), args=json.dumps(args),
            server=server, api_key=None, output="table", quiet=False,
        )
    )  # fmt: skip


def run_script_file(
    path: Path, *, vm_id: str | None, server: str, args: dict[str, object] | None = None
) -> int:
    if vm_id is None:
        from .sandbox.__main__ import main as run_locally

        return run_locally([str(path), "--args", json.dumps(args or {})])
    return _run_on_server(path, vm_id, server, args or {})
