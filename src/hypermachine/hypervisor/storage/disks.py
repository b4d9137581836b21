"""VM disks: qcow2 overlays on shared, read-only base images (``qemu-img``)."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from ...errors import HypervisorError, ValidationFailed

__all__ = [
    "QCOW2_HEADER_BYTES",
    "create_blank",
    "create_overlay",
    "qcow2_size_field",
    "qcow2_virtual_size",
    "qemu_img",
    "virtual_size",
]

GIB = 1024**3


async def qemu_img(binary: str, *args: str) -> str:
    try:
        done = await trio.run_process(
            [binary, *args], capture_stdout=True, capture_stderr=True, check=False
        )
    except OSError as err:
        raise HypervisorError(f"cannot run {binary}: {err.strerror}") from err
    if done.returncode != 0:
        raise HypervisorError(
            f"qemu-img {args[0]} failed", stderr=done.stderr.decode(errors="replace")[-500:]
        )
    return done.stdout.decode()


_QCOW2_MAGIC = b"QFI\xfb"


QCOW2_HEADER_BYTES = 32  # magic, version, backing file offset and size, cluster bits, size


def qcow2_size_field(header: bytes) -> int | None:
    """The size field of a qcow2 header (big-endian u64 at offset 24), or None when
    ``header`` is not the start of one."""
    if len(header) < QCOW2_HEADER_BYTES or header[:4] != _QCOW2_MAGIC:
        return None
    return int.from_bytes(header[24:32], "big")


def qcow2_virtual_size(image: Path) -> int | None:
    """The size field of ``image``'s qcow2 header, or None."""
    with open(image, "rb") as f:
        return qcow2_size_field(f.read(QCOW2_HEADER_BYTES))


async def virtual_size(binary: str, image: Path, image_format: str) -> int:
    """The guest-visible size of ``image`` in bytes.

    Read straight from the header for qcow2 and from the file size for raw (no
    process to spawn on the create path); anything else asks ``qemu-img info``.
    """
    if image_format == "raw":
        return image.stat().st_size
    if image_format == "qcow2" and (size := qcow2_virtual_size(image)) is not None:
        return size
    info = json.loads(await qemu_img(binary, "info", "-U", "--output=json", str(image)))
    return int(info["virtual-size"])


async def create_overlay(
    binary: str, *, base: Path, base_format: str, overlay: Path, size_gb: int
) -> None:
    """Make ``overlay`` a qcow2 backed by ``base`` and ``size_gb`` GiB large.

    Raises:
        ValidationFailed: the base image is larger than ``size_gb``.
        HypervisorError: qemu-img failed.
    """
    base_size = await virtual_size(binary, base, base_format)
    if base_size > size_gb * GIB:
        raise ValidationFailed(
            f"disk_gb {size_gb} is smaller than the image ({base_size / GIB:.1f} GiB)",
            field="disk_gb",
            minimum=-(-base_size // GIB),
        )
    overlay.parent.mkdir(parents=True, exist_ok=True)
    await qemu_img(
        binary, "create", "-q", "-f", "qcow2",
        "-b", str(base.resolve()), "-F", base_format,
        str(overlay), str(size_gb * GIB),
    )  # fmt: skip


async def create_blank(binary: str, *, overlay: Path, size_gb: int) -> None:
    """Make ``overlay`` an empty qcow2 of ``size_gb`` GiB (for images without a disk)."""
    overlay.parent.mkdir(parents=True, exist_ok=True)
    await qemu_img(binary, "create", "-q", "-f", "qcow2", str(overlay), str(size_gb * GIB))
