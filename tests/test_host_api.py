"""``GET /api/v1/host``, ``hypermachine host``, and what create/delete do with VARS and TPM
state (no guest is booted here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from hypermachine.api import Services
from hypermachine.hypervisor.platform import tpm
from hypermachine.hypervisor.platform.vmplatform import vars_file
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from hypermachine.models import HostCapabilities

CAPABILITIES = {"uefi", "secure_boot", "vtpm", "sev", "sev_es", "sev_snp", "tdx", "iommu", "vfio"}


async def test_host_document(client: Any, services: Services) -> None:
    response = await client.get("/api/v1/host")
    assert response.status_code == 200
    body = await response.get_json()
    caps = HostCapabilities.model_validate(body)  # the tool-output model, round-tripped
    assert set(body["capabilities"]) == CAPABILITIES
    assert caps.accelerator == services.manager.host.accelerator
    assert caps.cpu_count >= 1 and caps.memory_bytes > 0 and caps.qemu_version
    for name, cap in caps.capabilities:
        assert cap.reason, f"{name} has no reason"
    if caps.accelerator == "tcg":
        for name in ("sev", "sev_es", "sev_snp", "tdx"):
            assert not getattr(caps.capabilities, name).available
            assert "needs KVM" in getattr(caps.capabilities, name).reason


async def test_refresh_probes_again(client: Any) -> None:
    first = await (await client.get("/api/v1/host")).get_json()
    again = await (await client.get("/api/v1/host?refresh=true")).get_json()
    assert again["probed_at"] > first["probed_at"]
    cached = await (await client.get("/api/v1/host")).get_json()
    assert cached["probed_at"] == again["probed_at"]
    bad = await client.get("/api/v1/host?refresh=maybe")
    assert bad.status_code == 400


async def test_refusal_names_what_the_host_reports(client: Any, services: Services) -> None:
    caps = services.manager.host.capabilities
    assert caps is not None
    if caps.capabilities.sev_es.available:
        pytest.skip("this host can run SEV-ES guests")
    response = await client.post(
        "/api/v1/vms",
        json={"name": "es", "image": "tiny", "security": {"memory_encryption": "sev_es"}},
    )
    assert response.status_code == 409
    error = (await response.get_json())["error"]
    assert error["code"] == "CAPABILITY_UNAVAILABLE"
    reason = error["details"]["unsupported"]["security.memory_encryption"]
    assert reason == f"sev_es is not available: {caps.capabilities.sev_es.reason}"
    assert services.manager.list()[0] == []


async def test_create_makes_vars_and_tpm_state_and_delete_removes_them(
    client: Any, services: Services
) -> None:
    caps = services.manager.host.capabilities
    assert caps is not None
    if not (caps.capabilities.secure_boot.available and caps.capabilities.vtpm.available):
        pytest.skip("this host has no secure-boot firmware or no swtpm")
    response = await client.post(
        "/api/v1/vms",
        json={"name": "sb", "image": "tiny", "memory_mb": 512, "disk_gb": 1,
              "security": {"secure_boot": True, "vtpm": True}, "wait": True},
    )  # fmt: skip
    assert response.status_code == 201, await response.get_data()
    vm = await response.get_json()
    assert vm["state"] == "stopped" and vm["firmware"] == "uefi"
    # tiny boots with -kernel: the VM says plainly that secure boot does not check it
    assert any("does not verify this VM's kernel" in note for note in vm["security_notes"])
    settings = services.settings
    paths = VmPaths.for_vm(settings.vms_dir, settings.runtime_dir, vm["id"])
    secure = next(f for f in caps.firmware if f.kind == "uefi-secure-boot")
    assert secure.vars_template is not None
    with open(secure.vars_template, "rb") as template:
        assert vars_file(paths).read_bytes() == template.read()
    tpm_paths = tpm.TpmPaths.for_vm(paths)
    assert tpm_paths.initialised and tpm.find(tpm_paths) is None  # made, not started
    assert tpm_paths.state_dir.stat().st_mode & 0o777 == 0o700

    deleted = await client.delete(f"/api/v1/vms/{vm['id']}")
    assert deleted.status_code == 204
    assert not paths.vm_dir.exists()


def test_cli_host_json() -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    out = subprocess.run(
        [sys.executable, "-m", "hypermachine.cli", "host", "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    caps = HostCapabilities.model_validate(json.loads(out))
    text = subprocess.run(
        [sys.executable, "-m", "hypermachine.cli", "host"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    for name, cap in caps.capabilities:
        assert f"{name:<12} {'yes' if cap.available else 'no '}" in text
