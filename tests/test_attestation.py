"""Attestation of confidential VMs: what QEMU reports, per variant.

This host has no SEV or TDX, so the variants are driven with QMP answers in the
documented shapes at the QMP boundary; a VM without encryption goes through the API.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from hypermachine.errors import NotConfidential
from hypermachine.hypervisor.platform.vmplatform import attestation
from hypermachine.models import Vm, VmState

QUERY_SEV = {"enabled": True, "api-major": 1, "api-minor": 51, "build-id": 3, "policy": 1,
             "state": "launch-secret", "handle": 1, "sev-type": "sev"}  # fmt: skip
LAUNCH_MEASURE = {"data": "dGhlIG1lYXN1cmVtZW50IG9mIHRoZSBmaXJtd2FyZQ=="}


def vm(kind: str) -> Vm:
    now = datetime.now(UTC)
    security = {"memory_encryption": kind}
    return Vm.model_validate(
        {"id": "vm-0123456789ab", "uuid": "0b6c1a9e-7d7e-4b8e-9a53-1d2f3e4a5b6c", "name": "cc",
         "image": "tiny", "state": VmState.RUNNING, "created_at": now, "updated_at": now,
         "security": security, "firmware": "uefi"}
    )  # fmt: skip


def fake_qmp(answers: dict[str, Any], asked: list[str]) -> Any:
    class Qemu:
        async def execute(self, command: str, arguments: object = None) -> object:
            asked.append(command)
            return answers[command]

    return Qemu


@pytest.mark.parametrize("kind", ["sev", "sev_es"])
async def test_sev_reports_state_and_launch_measurement(kind: str) -> None:
    asked: list[str] = []
    answers = {"query-sev": QUERY_SEV, "query-sev-launch-measure": LAUNCH_MEASURE}
    report = await attestation(vm(kind), fake_qmp(answers, asked))
    assert asked == ["query-sev", "query-sev-launch-measure"]
    assert report == {"vm_id": "vm-0123456789ab", "memory_encryption": kind,
                      "sev": QUERY_SEV, "sev_launch_measure": LAUNCH_MEASURE}  # fmt: skip


@pytest.mark.parametrize(("kind", "queries"), [("sev_snp", ["query-sev"]), ("tdx", [])])
async def test_snp_and_tdx_say_where_their_reports_come_from(kind: str, queries: list[str]) -> None:
    asked: list[str] = []
    report = await attestation(vm(kind), fake_qmp({"query-sev": QUERY_SEV}, asked))
    assert asked == queries
    assert "inside the guest" in str(report["note"])


async def test_a_vm_without_encryption_is_refused_without_asking_qemu() -> None:
    asked: list[str] = []
    with pytest.raises(NotConfidential):
        await attestation(vm("none"), fake_qmp({}, asked))
    assert asked == []


async def test_api_refuses_attestation_of_an_ordinary_vm(client: Any) -> None:
    body = {"name": "plain", "image": "tiny", "disk_gb": 1, "wait": True}
    created = await (await client.post("/api/v1/vms", json=body)).get_json()
    response = await client.get(f"/api/v1/vms/{created['id']}/attestation")
    assert response.status_code == 409
    assert (await response.get_json())["error"]["code"] == "NOT_CONFIDENTIAL"
    missing = await client.get("/api/v1/vms/vm-000000000000/attestation")
    assert missing.status_code == 404
