"""schemathesis against the server's own ``/openapi.json``, as a tenant, on a real server.

Bounded (a few examples per operation) so it runs in the normal suite. Every
answer must be a non-5xx that conforms to the published schema (status code,
content type, headers, body).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import positive_data_acceptance

from realserver import Server, free_port
from support import TINY_DIR, qemu_pids_for

EXAMPLES = int(os.environ.get("HM_FUZZ_EXAMPLES", "12"))


def _key(data_dir: Path, *args: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HM_")}
    done = subprocess.run(
        [sys.executable, "-m", "hypermachine.cli", "--data-dir", str(data_dir), "key", "create",
         *args],
        env=environ, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    if not (TINY_DIR / "image.json").exists():
        pytest.skip("the tiny image is not built")
    data_dir = tmp_path_factory.mktemp("fuzz")
    tenant = _key(data_dir, "--name", "fuzzer", "--tier", "enterprise")  # no rate limit
    admin = _key(data_dir, "--name", "ops", "--admin", "--tier", "enterprise")
    server = Server(data_dir, free_port())
    server.start()
    try:
        yield server, tenant
    finally:
        headers = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=server.url, timeout=120, headers=headers) as client:
            vms = client.get("/api/v1/vms", params={"limit": 500}).json()["vms"]
            for vm in vms:
                client.delete(f"/api/v1/vms/{vm['id']}", params={"force": "true"})
        server.stop()
        assert qemu_pids_for({vm["uuid"] for vm in vms}) == []


Operation = schemathesis.APIOperation[Any, Any, Any, Any]


def _fuzz(operation: Operation, base_url: str, key: str) -> None:
    # Not required here: "every schema-valid request is accepted". Some are rightly
    # refused by facts a schema cannot carry (a cursor this server never handed out,
    # a call envelope of /agentic/execute, a disk smaller than its image).
    excluded: list[Any] = [positive_data_acceptance]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(
            base_url=base_url,
            headers={"Authorization": f"Bearer {key}"},
            excluded_checks=excluded,
            timeout=120,
        )

    run()


def _fuzz_status(operation: Operation, base_url: str, key: str) -> None:
    """For a route whose success never ends (a stream) or speaks JSON-RPC (MCP): every
    generated request is answered below 500; a stream's body is not waited for."""

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    def run(case: schemathesis.Case[Any]) -> None:
        kwargs = case.as_transport_kwargs(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}
        )
        request = {k: v for k, v in kwargs.items() if k in ("method", "url", "headers", "params")}
        body = kwargs.get("json")
        content = kwargs.get("data")
        with httpx.stream(
            **request,
            **({"json": body} if body is not None else {}),
            **({"content": content} if content is not None else {}),
            timeout=60,
        ) as response:
            assert response.status_code < 500, (case.as_curl_command(), response.status_code)

    run()


def _operations(schema: Any) -> list[Operation]:
    """Every operation of the schema; one schemathesis cannot read fails the test."""
    found = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise AssertionError(f"an operation of /openapi.json is unreadable: {result.err()}")
        found.append(result.ok())
    return found


def _streams(operation: Operation) -> bool:
    responses = operation.definition.raw.get("responses", {})
    if "101" in responses:
        return True
    return any("text/event-stream" in (r.get("content") or {}) for r in responses.values())


def test_api_conforms_and_never_fails(fuzz_server: tuple[Server, str]) -> None:
    server, tenant = fuzz_server
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    # /mcp speaks JSON-RPC (its errors are JSON-RPC errors, not the REST error format);
    # it is exercised through the official MCP SDK in tests/agentic/test_mcp_sdk.py.
    # Streams (server-sent events, the console websocket) never end by themselves: their
    # own tests drive them (tests/test_guest.py).
    every = _operations(schema)
    operations = [op for op in every if op.path != "/mcp" and not _streams(op)]
    assert len(operations) >= 10, [op.label for op in operations]
    for operation in operations:
        try:
            _fuzz(operation, server.url, tenant)
        except Exception as err:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {err!r}"[:3000])
    # The routes above: only "never a 5xx" (their bodies never end or are JSON-RPC).
    rest = [op for op in every if op.path == "/mcp" or _streams(op)]
    assert len(rest) >= 5, [op.label for op in rest]
    for operation in rest:
        try:
            _fuzz_status(operation, server.url, tenant)
        except Exception as err:
            failures.append(f"{operation.label}: {err!r}"[:3000])
    assert not failures, "\n\n".join(failures)
