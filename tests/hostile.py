"""One table of hostile create requests, shared by API, tool and script tests.

Each row: an id, the JSON body (or raw bytes), and the status and error code it
must get. Every one must change nothing: no row, no file, no process.
"""

from __future__ import annotations

from typing import Any

GOOD: dict[str, Any] = {"name": "ok", "image": "tiny", "memory_mb": 512, "disk_gb": 1}


def body(**changes: Any) -> dict[str, Any]:
    merged = {**GOOD, **changes}
    return {k: v for k, v in merged.items() if v is not ...}


HOSTILE_BODIES: list[tuple[str, Any, int, str]] = [
    ("comma-file-injection", body(name="x,file=/etc/passwd"), 400, "VALIDATION_ERROR"),
    ("comma-process", body(name="vm1,process=pwned"), 400, "VALIDATION_ERROR"),
    ("newline", body(name="a\nb"), 400, "VALIDATION_ERROR"),
    ("nul", body(name="a\x00b"), 400, "VALIDATION_ERROR"),
    ("rtl-unicode", body(name="abc\u202edcba"), 400, "VALIDATION_ERROR"),
    ("path-traversal", body(name="../../etc"), 400, "VALIDATION_ERROR"),
    ("leading-dash", body(name="-readconfig"), 400, "VALIDATION_ERROR"),
    ("too-long-name", body(name="a" * 64), 400, "VALIDATION_ERROR"),
    ("empty-name", body(name=""), 400, "VALIDATION_ERROR"),
    ("missing-name", body(name=...), 400, "VALIDATION_ERROR"),
    ("missing-image", body(image=...), 400, "VALIDATION_ERROR"),
    ("huge-memory", body(memory_mb=10**18), 400, "VALIDATION_ERROR"),
    ("small-memory", body(memory_mb=511), 400, "VALIDATION_ERROR"),
    ("negative-cpus", body(cpus=-1), 400, "VALIDATION_ERROR"),
    ("zero-cpus", body(cpus=0), 400, "VALIDATION_ERROR"),
    ("too-many-cpus", body(cpus=129), 400, "VALIDATION_ERROR"),
    ("string-cpus", body(cpus="2; rm -rf /"), 400, "VALIDATION_ERROR"),
    ("float-cpus", body(cpus=1.5), 400, "VALIDATION_ERROR"),
    ("zero-disk", body(disk_gb=0), 400, "VALIDATION_ERROR"),
    ("huge-disk", body(disk_gb=10_001), 400, "VALIDATION_ERROR"),
    ("unknown-field", body(qemu_args=["-hda", "/etc/shadow"]), 400, "VALIDATION_ERROR"),
    (
        "unknown-nested-field",
        body(network={"type": "nat", "script": "/x"}),
        400,
        "VALIDATION_ERROR",
    ),
    ("bad-network-type", body(network={"type": "tap"}), 400, "VALIDATION_ERROR"),
    ("static-ip-on-nat", body(network={"type": "nat", "ip": "10.0.0.5"}), 400, "VALIDATION_ERROR"),
    ("bad-ip", body(network={"type": "bridge", "ip": "999.1.1.1"}), 400, "VALIDATION_ERROR"),
    ("bad-label-key", body(labels={"a b": "x"}), 400, "VALIDATION_ERROR"),
    ("label-control-char", body(labels={"k": "v\x07"}), 400, "VALIDATION_ERROR"),
    ("label-not-string", body(labels={"k": 1}), 400, "VALIDATION_ERROR"),
    ("unknown-image", body(image="windows-11"), 400, "IMAGE_NOT_FOUND"),
    ("image-path", body(image="/etc/passwd"), 400, "IMAGE_NOT_FOUND"),
    ("image-traversal", body(image="../tiny"), 400, "IMAGE_NOT_FOUND"),
    ("bridge-unsupported", body(network={"type": "bridge"}), 409, "CAPABILITY_UNAVAILABLE"),
    ("sev-on-tcg", body(security={"memory_encryption": "sev"}), 409, "CAPABILITY_UNAVAILABLE"),
    ("tdx-on-tcg", body(security={"memory_encryption": "tdx"}), 409, "CAPABILITY_UNAVAILABLE"),
    (
        "sev-es-on-tcg",
        body(security={"memory_encryption": "sev_es"}),
        409,
        "CAPABILITY_UNAVAILABLE",
    ),
    ("snp-on-tcg", body(security={"memory_encryption": "sev_snp"}), 409, "CAPABILITY_UNAVAILABLE"),
    ("bad-encryption", body(security={"memory_encryption": "sme"}), 400, "VALIDATION_ERROR"),
    (
        "policy-on-tdx",
        body(security={"memory_encryption": "tdx", "policy": 1}),
        400,
        "VALIDATION_ERROR",
    ),
    (
        "es-bit-on-sev",
        body(security={"memory_encryption": "sev", "policy": 5}),
        400,
        "VALIDATION_ERROR",
    ),
    (
        "negative-policy",
        body(security={"memory_encryption": "sev", "policy": -1}),
        400,
        "VALIDATION_ERROR",
    ),
    (
        "secure-boot-on-bios",
        body(firmware="bios", security={"secure_boot": True}),
        400,
        "VALIDATION_ERROR",
    ),
    (
        "secure-boot-with-sev",
        body(security={"secure_boot": True, "memory_encryption": "sev"}),
        400,
        "VALIDATION_ERROR",
    ),
    ("unknown-firmware", body(firmware="/usr/share/OVMF/evil.fd"), 400, "VALIDATION_ERROR"),
    (
        "unknown-security-field",
        body(security={"vtpm": True, "tpm_path": "/dev/tpm0"}),
        400,
        "VALIDATION_ERROR",
    ),
    ("gpu-without-iommu", body(gpu={"enabled": True}), 409, "CAPABILITY_UNAVAILABLE"),
    (
        "vgpu-without-mdev",
        body(gpu={"enabled": True, "type": "vgpu"}),
        409,
        "CAPABILITY_UNAVAILABLE",
    ),
    (
        "gpu-device-injection",
        body(gpu={"enabled": True, "device": "0000:01:00.0,romfile=/x"}),
        400,
        "VALIDATION_ERROR",
    ),
    (
        "gpu-profile-on-passthrough",
        body(gpu={"enabled": True, "profile": "nvidia-63"}),
        400,
        "VALIDATION_ERROR",
    ),
    ("bad-mac", body(network={"mac": "52:54:00:zz:00:01"}), 400, "VALIDATION_ERROR"),
    ("multicast-mac", body(network={"mac": "01:00:5e:00:00:01"}), 400, "VALIDATION_ERROR"),
    ("mac-newline", body(network={"mac": "52:54:00:00:00:01\n"}), 400, "VALIDATION_ERROR"),
    (
        "privileged-port",
        body(network={"ports": [{"host": 22, "guest": 22}]}),
        400,
        "VALIDATION_ERROR",
    ),
    (
        "port-out-of-range",
        body(network={"ports": [{"host": 70000, "guest": 22}]}),
        400,
        "VALIDATION_ERROR",
    ),
    (
        "port-string-injection",
        body(network={"ports": [{"host": "2222-:22,hostfwd=tcp::1-:1", "guest": 22}]}),
        400,
        "VALIDATION_ERROR",
    ),
    (
        "port-bad-protocol",
        body(network={"ports": [{"host": 2222, "guest": 22, "protocol": "sctp"}]}),
        400,
        "VALIDATION_ERROR",
    ),
    (
        "port-twice",
        body(network={"ports": [{"host": 2222, "guest": 22}, {"host": 2222, "guest": 80}]}),
        400,
        "VALIDATION_ERROR",
    ),
    (
        "ports-on-bridge",
        body(network={"type": "bridge", "ports": [{"host": 2222, "guest": 22}]}),
        400,
        "VALIDATION_ERROR",
    ),
    (
        "bridge-name-injection",
        body(network={"type": "bridge", "bridge": "br0,script=/x"}),
        400,
        "VALIDATION_ERROR",
    ),
    ("ipv6-static", body(network={"type": "bridge", "ip": "fd00::5"}), 400, "VALIDATION_ERROR"),
    (
        "cloud-init-bad-key",
        body(cloud_init={"ssh_authorized_keys": ["ssh-rsa x\nruncmd"]}),
        400,
        "VALIDATION_ERROR",
    ),
    ("cloud-init-hostname", body(cloud_init={"hostname": "a\nb"}), 400, "VALIDATION_ERROR"),
    ("cloud-init-no-header", body(cloud_init={"user_data": "rm -rf /"}), 400, "VALIDATION_ERROR"),
    ("cloud-init-unknown", body(cloud_init={"runcmd": ["x"]}), 400, "VALIDATION_ERROR"),
    ("array-body", [GOOD], 400, "VALIDATION_ERROR"),
    ("string-body", "hello", 400, "VALIDATION_ERROR"),
]

RAW_BODIES: list[tuple[str, bytes, str, int, str]] = [
    ("malformed-json", b'{"name": "x",', "application/json", 400, "VALIDATION_ERROR"),
    ("trailing-garbage", b'{"name": "x"} xx', "application/json", 400, "VALIDATION_ERROR"),
    ("deep-nesting", b'{"labels":' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json", 400,
     "VALIDATION_ERROR"),
    ("wrong-content-type", b'{"name":"x","image":"tiny"}', "text/plain", 415,
     "UNSUPPORTED_MEDIA_TYPE"),
    ("form-encoded", b"name=x&image=tiny", "application/x-www-form-urlencoded", 415,
     "UNSUPPORTED_MEDIA_TYPE"),
    ("too-large", b'{"name":"' + b"a" * (2 * 1024 * 1024) + b'"}', "application/json", 413,
     "PAYLOAD_TOO_LARGE"),
]  # fmt: skip
