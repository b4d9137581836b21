"""cloud-init NoCloud seeds: content, the ISO read back with pycdlib, validation, and
the seed attached read-only to a real tiny VM (seen in QMP ``query-block``)."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pycdlib
import pytest
from pydantic import ValidationError

from hypermachine.api import Services
from hypermachine.hypervisor.devices import cloudinit
from hypermachine.models import CloudInitSpec, NetworkInfo, Vm, VmState

UUID = "3f2a0c4e-1111-4222-8333-444455556666"


def ssh_key(kind: str = "ssh-ed25519", comment: str = "alice@laptop") -> str:
    name = kind.encode()
    blob = len(name).to_bytes(4, "big") + name + (32).to_bytes(4, "big") + bytes(range(32))
    return f"{kind} {base64.b64encode(blob).decode()} {comment}"


KEY = ssh_key()


def make_vm(**fields: Any) -> Vm:
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "id": "vm-3f2a0c4e1111",
        "uuid": UUID,
        "name": "web_1",
        "image": "tiny",
        "state": VmState.STOPPED,
        "created_at": now,
        "updated_at": now,
    }
    return Vm.model_validate({**base, **fields})


BRIDGED = NetworkInfo(
    type="bridge",
    mac="52:54:00:aa:bb:cc",
    ip="192.0.2.10/24",
    gateway="192.0.2.1",
    bridge="br0",
    tap="hmt3f2a0c4e1111",
)


def read_iso(data: bytes) -> tuple[str, dict[str, bytes]]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for name in ("meta-data", "user-data", "network-config"):
            out = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                continue
            files[name] = out.getvalue()
    finally:
        iso.close()
    return label, files


def test_generated_seed_has_keys_hostname_and_stable_instance_id() -> None:
    vm = make_vm(cloud_init={"ssh_authorized_keys": [KEY], "hostname": "web-1"})
    files = cloudinit.seed_files(vm)
    assert set(files) == {"meta-data", "user-data"}
    meta = json.loads(files["meta-data"])
    assert meta == {"instance-id": f"hm-{UUID}", "local-hostname": "web-1", "public-keys": [KEY]}
    head, _, rest = files["user-data"].decode().partition("\n")
    assert head == "#cloud-config"
    assert json.loads(rest) == {"hostname": "web-1", "ssh_authorized_keys": [KEY]}
    assert cloudinit.seed_files(vm) == files  # the same at every start


def test_users_own_user_data_is_kept_verbatim() -> None:
    script = "#!/bin/sh\necho hello > /tmp/x\n"
    vm = make_vm(cloud_init={"user_data": script, "ssh_authorized_keys": [KEY]})
    files = cloudinit.seed_files(vm)
    assert files["user-data"] == script.encode()
    assert json.loads(files["meta-data"])["public-keys"] == [KEY]
    assert json.loads(files["meta-data"])["local-hostname"] == "web-1"  # from the VM name


def test_static_address_becomes_network_config_v2() -> None:
    files = cloudinit.seed_files(make_vm(network={"type": "bridge"}, network_info=BRIDGED))
    assert json.loads(files["network-config"]) == {
        "version": 2,
        "ethernets": {
            "nic0": {
                "match": {"macaddress": "52:54:00:aa:bb:cc"},
                "addresses": ["192.0.2.10/24"],
                "routes": [{"to": "0.0.0.0/0", "via": "192.0.2.1"}],
            }
        },
    }


def test_who_gets_a_seed() -> None:
    bridged = make_vm(network={"type": "bridge"}, network_info=BRIDGED)
    assert cloudinit.needs_seed(bridged, direct_kernel=False)  # cloud image: network-config
    assert not cloudinit.needs_seed(bridged, direct_kernel=True)  # kernel boot: ip=
    assert not cloudinit.needs_seed(make_vm(), direct_kernel=False)
    assert cloudinit.needs_seed(make_vm(cloud_init={}), direct_kernel=True)


def test_iso_reads_back_as_cidata() -> None:
    vm = make_vm(
        cloud_init={"ssh_authorized_keys": [KEY]}, network={"type": "bridge"}, network_info=BRIDGED
    )
    files = cloudinit.seed_files(vm)
    label, found = read_iso(cloudinit.build_iso(files))
    assert label == "cidata"
    assert found == files


@pytest.mark.parametrize(
    "spec",
    [
        {"ssh_authorized_keys": ["not a key"]},
        {"ssh_authorized_keys": ["ssh-ed25519 AAAA!!!!"]},
        {"ssh_authorized_keys": [ssh_key().replace("ssh-ed25519 ", "ssh-rsa ", 1)]},  # blob lies
        {"ssh_authorized_keys": [ssh_key(comment="a\nssh-rsa AAAA evil")]},
        {"ssh_authorized_keys": [KEY] * 33},
        {"hostname": "web_1"},
        {"hostname": "-web"},
        {"hostname": "web\n"},
        {"hostname": "a" * 64},
        {"user_data": "hello, no header"},
        {"user_data": "#cloud-config\n\x00"},
        {"user_data": "#cloud-config\n" + "x" * 256 * 1024},
        {"users": []},
    ],
)
def test_bad_cloud_init_is_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CloudInitSpec.model_validate(spec)


def test_good_keys_of_every_kind() -> None:
    for kind in ("ssh-rsa", "ecdsa-sha2-nistp256", "sk-ssh-ed25519@openssh.com"):
        CloudInitSpec(ssh_authorized_keys=[ssh_key(kind)])


@pytest.mark.qemu
async def test_seed_is_attached_read_only_to_a_real_vm(client: Any, services: Services) -> None:
    body = {
        "name": "seeded",
        "image": "tiny",
        "memory_mb": 512,
        "disk_gb": 1,
        "cloud_init": {"ssh_authorized_keys": [KEY], "hostname": "seeded-1"},
        "start": True,
        "wait": True,
    }
    response = await client.post("/api/v1/vms", json=body)
    vm = await response.get_json()
    assert response.status_code == 201 and vm["state"] == "running", vm
    blocks = await services.manager.qmp(vm["id"], "query-block", None)
    assert isinstance(blocks, list)
    seed = next(b for b in blocks if "seed0" in str(b.get("qdev")))
    assert seed["inserted"]["ro"] is True
    assert seed["inserted"]["file"].endswith(f"{vm['id']}/seed.iso")
    label, files = read_iso(Path(seed["inserted"]["file"]).read_bytes())
    assert label == "cidata"
    assert json.loads(files["meta-data"])["local-hostname"] == "seeded-1"

    assert (await client.delete(f"/api/v1/vms/{vm['id']}?force=true")).status_code == 204
    assert not (services.settings.vms_dir / vm["id"]).exists()
