"""A VM's disk as a chain of qcow2 layers in its folder; ``disk.qcow2`` names the top.

    <vm dir>/disk-0001.qcow2   backed by the catalogue image (absolute path)
    <vm dir>/disk-0002.qcow2   backed by "disk-0001.qcow2" (a bare name: same folder)
    <vm dir>/disk.qcow2 -> disk-0002.qcow2   (a symlink: the layer QEMU writes)

A snapshot freezes the top layer (it is never written again) and puts a new empty one
above it. Because layers name their backing file by a bare name, a chain is portable:
a fork hard-links the frozen layers into the child's folder under the same names and
puts the child's own top above them, so parent and child share the frozen blocks and
either can be deleted without the other (a layer's data lives while one link does).
The symlink lives in the same folder as the layers, so QEMU resolves the relative
backing names the same way whether it opens the link or the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ...errors import HypervisorError, VmFilesDamaged
from ..vmfiles import nofollow
from . import disks

__all__ = [
    "FIRST",
    "TOP",
    "all_layers",
    "backing_of",
    "chain",
    "collect",
    "create_above",
    "current",
    "link_chain",
    "point_top",
    "settle_legacy",
    "virtual_size",
]

TOP = "disk.qcow2"
FIRST = "disk-0001.qcow2"
_LAYER = re.compile(r"^disk-(\d{4,})\.qcow2$")
_BACKING_NAME_MAX = 1023  # qcow2's limit on the backing file name
# An empty layer is the same bytes for the same backing name and size (qemu-img -u
# names the backing file without opening it), so each is made once and then copied:
# a copy takes well under a millisecond, qemu-img ~10 ms of a fork's or restore's time.
_EMPTY: dict[tuple[str, str, int], bytes] = {}
_EMPTY_KEPT = 32


def _number(name: str) -> int:
    match = _LAYER.match(name)
    return int(match.group(1)) if match else 0


def all_layers(vm_dir: Path) -> list[str]:
    """The layer files in the folder, oldest first."""
    return sorted((p.name for p in vm_dir.iterdir() if _LAYER.match(p.name)), key=_number)


def is_layer(name: str) -> bool:
    """Whether ``name`` is a layer's name (a bare ``disk-NNNN.qcow2``)."""
    return _LAYER.fullmatch(name) is not None


def current(vm_dir: Path) -> str:
    """The layer ``disk.qcow2`` points to (the one QEMU writes).

    Raises:
        HypervisorError: the link names something else (the QEMU user owns the folder).
    """
    name = os.readlink(vm_dir / TOP)
    if not is_layer(name):
        raise VmFilesDamaged(f"{vm_dir / TOP} points to {name[:200]!r}, not to a disk layer")
    return name


def settle_legacy(vm_dir: Path) -> None:
    """A disk made before layers (a plain ``disk.qcow2``) becomes layer 1 under the link.

    Its backing file is the catalogue image's absolute path, so the rename changes nothing
    for QEMU, which holds the file open.
    """
    top = vm_dir / TOP
    if top.is_symlink() or not top.exists():
        return
    top.rename(vm_dir / FIRST)
    point_top(vm_dir, FIRST)


def point_top(vm_dir: Path, name: str) -> None:
    """Make ``disk.qcow2`` name ``name`` in one step (a half-switched link cannot be seen)."""
    staged = vm_dir / f".{TOP}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    staged.symlink_to(name)
    staged.replace(vm_dir / TOP)


def backing_of(image: Path) -> str | None:
    """The backing file name written in a qcow2 header, or None (none, or not qcow2)."""
    header = _header(image)
    return header[1] if header is not None else None


def virtual_size(image: Path) -> int | None:
    """A layer's guest-visible size from its qcow2 header, or None (not qcow2)."""
    header = _header(image)
    return header[0] if header is not None else None


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _header(image: Path) -> tuple[int, str | None] | None:
    """(virtual size, backing file name) of a qcow2 layer, or None when it is not one.

    The QEMU user owns the folder, so the layer is read through the folder's
    descriptor: a symlink there is not followed, a FIFO does not block the server, and
    the name is read up to the 1023 bytes qcow2 allows, whatever length it claims.
    """
    try:
        with nofollow.Folder(image.parent) as folder, folder.open(image.name) as f:
            header = f.read(disks.QCOW2_HEADER_BYTES)
            size = disks.qcow2_size_field(header)
            if size is None:
                return None
            offset = int.from_bytes(header[8:16], "big")
            length = min(int.from_bytes(header[16:20], "big"), _BACKING_NAME_MAX)
            if offset == 0 or length == 0:
                return size, None
            f.seek(offset)
            return size, f.read(length).decode(errors="replace")
    except OSError:  # gone, or not a regular file (NotRegularFile)
        return None


def chain(vm_dir: Path, name: str) -> list[str]:
    """``name`` and the layers below it in ``vm_dir``, top first (the catalogue image,
    outside the folder, ends the walk, and so does a name that is not a regular file:
    a symlink or FIFO the QEMU user planted is never linked into a fork or kept)."""
    found: list[str] = []
    while name and _LAYER.match(name) and _regular(vm_dir / name) and name not in found:
        found.append(name)
        name = backing_of(vm_dir / name) or ""
    return found


async def create_above(
    qemu_img: str, vm_dir: Path, below: str, owner: tuple[int, int] | None = None
) -> str:
    """A new empty top layer backed by ``below``; returns its name (not yet the top).
    With ``owner`` (uid, gid) the layer is given to that user.

    The folder belongs to the QEMU user, so the layer is created ``O_EXCL`` through the
    folder's descriptor (and handed over through that descriptor): a name planted there
    (a symlink to a host file), even swapped in after the write, fails the call or is
    left alone instead of being written through or handed over.

    Raises:
        HypervisorError: qemu-img failed, or the layer could not be written.
    """
    size = virtual_size(vm_dir / below)
    if size is None:
        raise VmFilesDamaged(f"disk layer {below} is not a qcow2 image")
    image = await _empty_layer(qemu_img, below, size)
    name = f"disk-{max(map(_number, all_layers(vm_dir)), default=0) + 1:04d}.qcow2"
    try:
        with (
            nofollow.Folder(vm_dir) as folder,
            folder.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644) as out,
        ):
            out.write(image)
            if owner is not None:
                os.fchown(out.fileno(), *owner)
    except OSError as err:
        planted = err.errno in (errno.EEXIST, errno.ELOOP)  # the QEMU user took the name
        error = VmFilesDamaged if planted else HypervisorError
        raise error(f"cannot write disk layer {name}: {err.strerror}") from err
    return name


async def _empty_layer(qemu_img: str, below: str, size: int) -> bytes:
    """The bytes of an empty qcow2 layer of ``size`` backed by ``below`` (a bare name).

    ``qemu-img -u`` does not open ``below``, which a running QEMU holds locked; it
    writes into a folder of the server's own.
    """
    key = (qemu_img, below, size)
    image = _EMPTY.get(key)
    if image is None:
        with tempfile.TemporaryDirectory(prefix="hm-layer-") as scratch:
            made = Path(scratch) / "layer.qcow2"
            await disks.qemu_img(
                qemu_img, "create", "-q", "-f", "qcow2", "-u",
                "-b", below, "-F", "qcow2", str(made), str(size),
            )  # fmt: skip
            image = made.read_bytes()
        if len(_EMPTY) >= _EMPTY_KEPT:
            del _EMPTY[next(iter(_EMPTY))]
        _EMPTY[key] = image
    return image


def link_chain(source_dir: Path, name: str, target_dir: Path) -> None:
    """Hard-link ``name`` and the layers below it into ``target_dir`` (same names);
    a layer swapped for a symlink meanwhile is refused, its target never linked."""
    target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with nofollow.Folder(source_dir) as source, nofollow.Folder(target_dir) as target:
        for layer in chain(source_dir, name):
            source.link(layer, target, layer)


def collect(vm_dir: Path, keep: Iterable[str]) -> list[str]:
    """Delete the layers no chain in ``keep`` (the top, the snapshots' layers) reaches;
    returns their names."""
    wanted = {layer for name in keep for layer in chain(vm_dir, name)}
    dropped = [name for name in all_layers(vm_dir) if name not in wanted]
    for name in dropped:
        (vm_dir / name).unlink()
    return dropped
