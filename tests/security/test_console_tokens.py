"""Console tokens: a browser's websocket credential is single-use and bound to one
tenant, one VM and one console kind; the console websockets check Origin.

The VMs here stay stopped (no QEMU): a token that is accepted gets as far as the
console itself, which answers 409 INVALID_STATE; one that is refused gets 401.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from keyed import Keyed, assert_error, keyed_server
from test_operation_layer import websocket_refusal

from hypermachine.errors import Unauthorized
from hypermachine.security.caller import Caller
from hypermachine.security.tokens import ConsoleTokens

VM = {"image": "tiny", "memory_mb": 512, "disk_gb": 1}


@pytest.fixture
async def keyed(data_dir: Path, compile_cache: Path, tiny: Path) -> Any:
    async with keyed_server(data_dir, compile_cache, rate_limit_free=0) as k:
        yield k


async def make_vm(keyed: Keyed, key: str, name: str, **extra: Any) -> str:
    status, vm, _ = await keyed.call("POST", "/api/v1/vms", key, json={**VM, "name": name, **extra})
    assert status == 201, vm
    return str(vm["id"])


async def token(keyed: Keyed, key: str, vm_id: str, kind: str = "serial") -> str:
    status, body, _ = await keyed.call(
        "POST", f"/api/v1/vms/{vm_id}/console/token", key, json={"kind": kind}
    )
    assert status == 200, body
    assert body["kind"] == kind and body["expires_in"] > 0
    return str(body["token"])


async def open_with(
    keyed: Keyed, vm_id: str, secret: str, what: str = "console"
) -> tuple[int, Any]:
    """Open a console websocket with only a token, as a browser page does."""
    path = f"/api/v1/vms/{vm_id}/{what}?token={secret}"
    return await websocket_refusal(keyed.client, path, {"Origin": "http://127.0.0.1:8080"})


async def test_a_token_opens_its_console_once(keyed: Keyed) -> None:
    vm_id = await make_vm(keyed, keyed.alice, "a-1")
    secret = await token(keyed, keyed.alice, vm_id)
    status, body = await open_with(keyed, vm_id, secret)
    assert status == 409, body  # accepted: the stopped VM's console answers
    assert_error(body, "INVALID_STATE")
    status, body = await open_with(keyed, vm_id, secret)
    assert status == 401, body  # spent
    assert_error(body, "UNAUTHORIZED")


async def test_a_token_is_bound_to_its_vm_and_kind(keyed: Keyed) -> None:
    first = await make_vm(keyed, keyed.alice, "a-1", display={"type": "vnc"})
    second = await make_vm(keyed, keyed.alice, "a-2")
    status, body = await open_with(keyed, second, await token(keyed, keyed.alice, first))
    assert status == 401, body
    status, body = await open_with(keyed, first, await token(keyed, keyed.alice, first), "display")
    assert status == 401, body  # a serial token does not open the display
    status, body = await open_with(
        keyed, first, await token(keyed, keyed.alice, first, "vnc"), "display"
    )
    assert status == 409, body  # ...a vnc one does (the VM is stopped)
    status, body, _ = await keyed.call(
        "POST", f"/api/v1/vms/{second}/console/token", keyed.alice, json={"kind": "vnc"}
    )
    assert status == 400, body  # no display, no vnc token
    assert_error(body, "VALIDATION_ERROR")


async def test_another_tenants_token_is_refused(keyed: Keyed) -> None:
    alices = await make_vm(keyed, keyed.alice, "a-1")
    bobs = await make_vm(keyed, keyed.bob, "b-1")
    status, body, _ = await keyed.call(
        "POST", f"/api/v1/vms/{alices}/console/token", keyed.bob, json={}
    )
    assert status == 404, body
    assert_error(body, "VM_NOT_FOUND")
    status, body = await open_with(keyed, alices, await token(keyed, keyed.bob, bobs))
    assert status == 404, body  # bob's token is bob: alice's VM does not exist for him
    status, body = await open_with(keyed, alices, "hmct_made-up")
    assert status == 401, body


async def test_display_refuses_a_foreign_origin(keyed: Keyed) -> None:
    vm_id = await make_vm(keyed, keyed.alice, "a-1", display={"type": "vnc"})
    secret = await token(keyed, keyed.alice, vm_id, "vnc")
    path = f"/api/v1/vms/{vm_id}/display?token={secret}"
    status, body = await websocket_refusal(keyed.client, path, {"Origin": "http://evil.example"})
    assert status == 403, body
    assert_error(body, "FORBIDDEN")


def test_a_token_expires() -> None:
    now = [100.0]
    tokens = ConsoleTokens(30, clock=lambda: now[0])
    alice = Caller(key_id="k-1", tenant="alice", tier="free", admin=False)
    secret = tokens.issue(alice, "vm-1", "serial")
    assert tokens.caller_of(secret) == alice
    now[0] += 30
    with pytest.raises(Unauthorized):
        tokens.caller_of(secret)
    with pytest.raises(Unauthorized):
        tokens.redeem(secret, alice, "vm-1", "serial")
