"""NoCloud seeds: ``meta-data``, ``user-data`` and ``network-config`` on an ISO9660 ``cidata``.

cloud-init (Ubuntu, Debian and Alpine cloud images) finds the volume by its label
and configures the guest from it: the instance id (stable per VM, so cloud-init
runs its once-per-instance steps once), the hostname, the SSH keys, the client's
own user-data, and the static address of a bridge VM as network-config v2.

Files are written as JSON, which is YAML too, so no client text can break out of
its value. The ISO is made in memory with pycdlib (no external tool) and attached
read-only as a virtio-blk disk. Images booted directly from a kernel get their
address as ``ip=`` instead (see :mod:`.network`) and a seed only when the client
asked for cloud-init.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pycdlib

from ...models import CloudInitSpec, NetworkInfo, Vm
from ..vmfiles import nofollow
from ..vmfiles.layout import VmPaths

__all__ = ["VOLUME_LABEL", "build_iso", "needs_seed", "seed_files", "write_seed"]

VOLUME_LABEL = "cidata"

# File name in the ISO9660 namespace (8.3) -> the name Rock Ridge and Joliet show.
_NAMES = {
    "meta-data": "/METADATA.;1",
    "user-data": "/USERDATA.;1",
    "network-config": "/NETWORKC.;1",
}


def _static_address(vm: Vm) -> bool:
    info = vm.network_info
    return info is not None and info.type == "bridge" and info.ip is not None


def needs_seed(vm: Vm, direct_kernel: bool) -> bool:
    """A seed is made when the client asked for cloud-init, or a disk-booted guest
    must learn its static address."""
    return vm.cloud_init is not None or (_static_address(vm) and not direct_kernel)


def _hostname(vm: Vm, spec: CloudInitSpec) -> str:
    if spec.hostname:
        return spec.hostname
    # VM names allow '_' and '.', hostnames don't (as label characters).
    return vm.name.replace("_", "-").replace(".", "-").strip("-") or vm.id


def _user_data(spec: CloudInitSpec, hostname: str) -> str:
    if spec.user_data is not None:
        return spec.user_data
    config: dict[str, object] = {"hostname": hostname}
    if spec.ssh_authorized_keys:
        config["ssh_authorized_keys"] = spec.ssh_authorized_keys
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"


def _network_config(info: NetworkInfo) -> str:
    nic: dict[str, object] = {"match": {"macaddress": info.mac}, "addresses": [info.ip]}
    if info.gateway:
        nic["routes"] = [{"to": "0.0.0.0/0", "via": info.gateway}]
    return json.dumps({"version": 2, "ethernets": {"nic0": nic}}, indent=2) + "\n"


def seed_files(vm: Vm) -> dict[str, bytes]:
    """The seed's files, by their NoCloud names."""
    spec = vm.cloud_init or CloudInitSpec()
    hostname = _hostname(vm, spec)
    meta: dict[str, object] = {"instance-id": f"hm-{vm.uuid}", "local-hostname": hostname}
    if spec.ssh_authorized_keys:
        # Also honoured when the client brings its own user-data.
        meta["public-keys"] = spec.ssh_authorized_keys
    files = {
        "meta-data": json.dumps(meta, indent=2) + "\n",
        "user-data": _user_data(spec, hostname),
    }
    if vm.network_info is not None and _static_address(vm):
        files["network-config"] = _network_config(vm.network_info)
    return {name: text.encode() for name, text in files.items()}


def build_iso(files: dict[str, bytes]) -> bytes:
    """An ISO9660 image labelled ``cidata`` (Rock Ridge and Joliet names) holding ``files``."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL)
    try:
        for name, data in files.items():
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                _NAMES[name],
                rr_name=name,
                joliet_path=f"/{name}",
            )
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return out.getvalue()


def write_seed(vm: Vm, direct_kernel: bool, paths: VmPaths) -> Path | None:
    """Write the VM's seed ISO (atomically) when it needs one; remove a stale one otherwise.

    The VM's folder may belong to the QEMU user: whatever has the seed's name (a
    planted symlink included) is replaced by a fresh file, never written through."""
    target = paths.seed_iso
    with nofollow.Folder(target.parent) as folder:
        if not needs_seed(vm, direct_kernel):
            folder.unlink(target.name)
            return None
        folder.write(target.name, build_iso(seed_files(vm)), 0o644)
    return target
