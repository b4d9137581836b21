"""The image catalogue: which guest images exist, where their files are, pull and import.

Three kinds of image, all described by :class:`Image`:

``builtin``
    Built on this host by ``tools/build-*-image`` into ``<builtin_dir>/<dir>/``
    (the repository's ``images/``). Listed in ``images/catalogue.toml``.
``remote``
    Well-known cloud images listed in the catalogue with an upstream URL and a checksum;
    :meth:`Catalogue.pull` downloads them into ``<store_dir>/<name>/``.
``imported``
    Disk images a host administrator copied in with :meth:`Catalogue.import_file`
    (CLI only); described by ``<store_dir>/<name>/image.json``.

File paths are always resolved here, from the catalogue and the store; no path, URL or
kernel command line ever comes from a REST client. Image names match :data:`NAME_RE`.
"""

from __future__ import annotations

import builtins
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, cast, get_args

from hypermachine import errors

__all__ = [
    "NAME_RE",
    "Boot",
    "Catalogue",
    "Firmware",
    "Format",
    "Image",
    "ProgressFn",
    "Source",
    "default_catalogue_file",
    "disk_info",
    "validate_name",
]

Boot = Literal["kernel", "disk"]
Format = Literal["qcow2", "raw"]
Source = Literal["builtin", "remote", "imported"]
Firmware = Literal["bios", "uefi"]
ProgressFn = Callable[[int, int | None], None]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_HEX_RE = {"sha256": re.compile(r"^[0-9a-f]{64}$"), "sha512": re.compile(r"^[0-9a-f]{128}$")}
_CHUNK = 1 << 20
_META = "image.json"
_REPO_IMAGES = Path(__file__).resolve().parents[2] / "images"


def default_catalogue_file() -> Path:
    """``$HM_IMAGES_DIR/catalogue.toml``, else the repository's ``images/catalogue.toml``."""
    root = os.environ.get("HM_IMAGES_DIR")
    return (Path(root) if root else _REPO_IMAGES) / "catalogue.toml"


def validate_name(name: object) -> str:
    """Return ``name`` if it is a safe image name, else raise ValidationFailed."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise errors.ValidationFailed(
            f"invalid image name {name!r}: use 1-63 of a-z 0-9 . _ - starting with a letter "
            "or digit",
            field="name",
        )
    return name


def _validate_append(append: object) -> str:
    if not isinstance(append, str) or len(append) > 2048:
        raise errors.ValidationFailed("kernel command line must be a string up to 2048 chars")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in append):
        raise errors.ValidationFailed("kernel command line must not contain control characters")
    return append


@dataclass(frozen=True)
class Image:
    """One catalogue entry with its files resolved to host paths."""

    name: str
    description: str
    os: str
    boot: Boot
    format: Format
    disk: Path | None
    kernel: Path | None
    initrd: Path | None
    append: str
    url: str | None
    sha256: str | None
    source: Source
    ready_marker: str | None = None
    build: str | None = None
    sha512: str | None = None
    firmware: Firmware = "bios"
    stand_in: str | None = None  # set when an unverified local file stands in for a remote image

    @property
    def files(self) -> list[Path]:
        """Every file the image needs."""
        return [p for p in (self.disk, self.kernel, self.initrd) if p is not None]

    @property
    def available(self) -> bool:
        """True when every file of the image is on disk (built, pulled or imported)."""
        files = self.files
        return bool(files) and all(p.is_file() for p in files)

    @property
    def size_bytes(self) -> int | None:
        """Bytes on disk of all the image's files, or None when not available."""
        if not self.available:
            return None
        return sum(p.stat().st_size for p in self.files)

    def to_dict(self) -> dict[str, object]:
        """Public description for the API: no host paths, no command line."""
        return {
            "name": self.name,
            "description": self.description,
            "os": self.os,
            "boot": self.boot,
            "format": self.format,
            "source": self.source,
            "available": self.available,
            "size_bytes": self.size_bytes,
            "url": self.url,
            "sha256": self.sha256,
            "firmware": self.firmware,
            "ready_marker": self.ready_marker,
            "stand_in": self.stand_in,
        }


def _literal(value: object, allowed: Any, what: str, where: str) -> Any:
    choices = get_args(allowed)
    if value not in choices:
        raise errors.HMError(f"{where}: {what} must be one of {list(choices)}, not {value!r}")
    return value


def _str(entry: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise errors.HMError(f"{where}: {key!r} must be a string")
    return value


def _opt_str(entry: dict[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise errors.HMError(f"{where}: {key!r} must be a string")
    return value


def _rel_file(base: Path, rel: str | None, where: str) -> Path | None:
    """``base/rel`` for a plain relative file name from a trusted catalogue/metadata file."""
    if rel is None:
        return None
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not rel:
        raise errors.HMError(f"{where}: file {rel!r} must be relative to the image directory")
    return base / p


def disk_info(path: Path) -> dict[str, Any]:
    """``qemu-img info --output=json`` of ``path`` (without following backing files)."""
    try:
        out = subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(path)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except FileNotFoundError as exc:
        raise errors.Unsupported("qemu-img is not installed on this host") from exc
    except subprocess.CalledProcessError as exc:
        raise errors.ValidationFailed(
            f"{path.name} is not a readable disk image: {exc.stderr.strip()}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise errors.ValidationFailed(f"qemu-img info timed out on {path.name}") from exc
    info = json.loads(out)
    if not isinstance(info, dict):
        raise errors.ValidationFailed(f"unexpected qemu-img output for {path.name}")
    return info


def _check_disk(path: Path, expected: Format | None = None) -> Format:
    """Detected format of a disk image; rejects other formats, backing and data files."""
    if not path.is_file():
        raise errors.ValidationFailed(f"{path} is not a regular file")
    info = disk_info(path)
    fmt = info.get("format")
    if fmt not in ("qcow2", "raw"):
        raise errors.ValidationFailed(
            f"{path.name}: format {fmt!r} is not supported (qcow2 or raw only)", format=fmt
        )
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise errors.ValidationFailed(
            f"{path.name} has a backing file; flatten it first (qemu-img convert -O qcow2)"
        )
    specific = info.get("format-specific") or {}
    if isinstance(specific, dict) and (specific.get("data") or {}).get("data-file"):
        raise errors.ValidationFailed(f"{path.name} uses an external data file")
    if fmt == "raw":
        # qemu-img calls anything it cannot recognise "raw": require a plausible disk size.
        size = path.stat().st_size
        if size < 512 or size % 512:
            raise errors.ValidationFailed(
                f"{path.name} is not a disk image (not qcow2, and {size} bytes is not a "
                "whole number of 512-byte sectors)"
            )
    if expected is not None and fmt != expected:
        raise errors.ValidationFailed(f"{path.name} is {fmt}, expected {expected}", format=fmt)
    return cast(Format, fmt)


class Catalogue:
    """Named guest images: built-in, remote (pullable) and imported.

    ``catalogue_file`` is the TOML catalogue, ``builtin_dir`` the root of the built
    images (the repository's ``images/``), ``store_dir`` where pulled and imported
    images live (the server's data dir ``/images``). The catalogue is re-read on every
    call, so builds, pulls and imports show up without a restart.
    """

    def __init__(self, catalogue_file: Path, builtin_dir: Path, store_dir: Path) -> None:
        self.catalogue_file = Path(catalogue_file)
        self.builtin_dir = Path(builtin_dir)
        self.store_dir = Path(store_dir)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @classmethod
    def default(cls, store_dir: Path) -> Catalogue:
        """The repository catalogue (or ``$HM_IMAGES_DIR``) with the given store."""
        cat = default_catalogue_file()
        return cls(cat, cat.parent, store_dir)

    # -- reading ---------------------------------------------------------------------

    def _entries(self) -> list[dict[str, Any]]:
        try:
            with self.catalogue_file.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            return []
        except tomllib.TOMLDecodeError as exc:
            raise errors.HMError(f"{self.catalogue_file}: {exc}") from exc
        entries = data.get("image", [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise errors.HMError(f"{self.catalogue_file}: expected [[image]] tables")
        return entries

    def _from_entry(self, entry: dict[str, Any]) -> Image:
        where = f"{self.catalogue_file.name}"
        name = validate_name(entry.get("name"))
        where = f"{where} [{name}]"
        boot: Boot = _literal(entry.get("boot", "disk"), Boot, "boot", where)
        fmt: Format = _literal(entry.get("format", "qcow2"), Format, "format", where)
        url = _opt_str(entry, "url", where)
        source: Source = "remote" if url else "builtin"
        stand_in: str | None = None
        if source == "builtin":
            base = self.builtin_dir / validate_name(_str(entry, "dir", where, name))
            disk = _rel_file(base, _opt_str(entry, "disk", where), where)
        else:
            base = self.store_dir / name
            disk = base / f"disk.{fmt}"
            stand_in = _stand_in_note(base)
        kernel = _rel_file(base, _opt_str(entry, "kernel", where), where)
        initrd = _rel_file(base, _opt_str(entry, "initrd", where), where)
        if boot == "kernel" and kernel is None:
            raise errors.HMError(f"{where}: boot = 'kernel' needs a kernel file")
        if boot == "disk" and disk is None:
            raise errors.HMError(f"{where}: boot = 'disk' needs a disk file")
        sums: dict[str, str | None] = {}
        for algo, pattern in _HEX_RE.items():
            value = _opt_str(entry, algo, where)
            if value is not None:
                value = value.lower()
                if not pattern.fullmatch(value):
                    raise errors.HMError(f"{where}: {algo} is not a hex {algo} digest")
            sums[algo] = value
        return Image(
            name=name,
            description=_str(entry, "description", where, ""),
            os=_str(entry, "os", where, "unknown"),
            boot=boot,
            format=fmt,
            disk=disk,
            kernel=kernel,
            initrd=initrd,
            append=_validate_append(entry.get("append", "")),
            url=url,
            sha256=sums["sha256"],
            sha512=sums["sha512"],
            source=source,
            ready_marker=_opt_str(entry, "ready_marker", where),
            build=_opt_str(entry, "build", where),
            firmware=_literal(entry.get("firmware", "bios"), Firmware, "firmware", where),
            stand_in=stand_in,
        )

    def _from_store(self, directory: Path) -> Image | None:
        meta = directory / _META
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("source") != "imported":
            return None
        where = str(meta)
        try:
            name = validate_name(data.get("name"))
            if name != directory.name:
                return None
            return Image(
                name=name,
                description=_str(data, "description", where, ""),
                os=_str(data, "os", where, "unknown"),
                boot=_literal(data.get("boot", "disk"), Boot, "boot", where),
                format=_literal(data.get("format"), Format, "format", where),
                disk=_rel_file(directory, _opt_str(data, "disk", where), where),
                kernel=_rel_file(directory, _opt_str(data, "kernel", where), where),
                initrd=_rel_file(directory, _opt_str(data, "initrd", where), where),
                append=_validate_append(data.get("append", "")),
                url=None,
                sha256=_opt_str(data, "sha256", where),
                source="imported",
                ready_marker=_opt_str(data, "ready_marker", where),
                firmware=_literal(data.get("firmware", "bios"), Firmware, "firmware", where),
            )
        except errors.HMError:
            return None

    def list(self) -> list[Image]:
        """Catalogue images (in catalogue order), then imported ones (by name)."""
        images = [self._from_entry(e) for e in self._entries()]
        seen = {i.name for i in images}
        if len(seen) != len(images):
            raise errors.HMError(f"{self.catalogue_file}: duplicate image names")
        imported: list[Image] = []
        if self.store_dir.is_dir():
            for d in sorted(self.store_dir.iterdir()):
                if d.is_dir() and d.name not in seen and NAME_RE.fullmatch(d.name):
                    img = self._from_store(d)
                    if img is not None:
                        imported.append(img)
        return images + imported

    def names(self) -> builtins.list[str]:
        return [i.name for i in self.list()]

    def get(self, name: str) -> Image:
        """The image called ``name``; ImageNotFound (with the known names) otherwise."""
        images = self.list()
        for img in images:
            if img.name == name:
                return img
        raise errors.ImageNotFound(
            f"unknown image {name!r}", image=name, available=[i.name for i in images]
        )

    # -- pull ------------------------------------------------------------------------

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def pull(
        self,
        name: str,
        progress: ProgressFn | None = None,
        *,
        url_override: str | None = None,
        force: bool = False,
    ) -> Image:
        """Download a remote image into ``store_dir/<name>/`` and verify its checksum.

        Blocking; run it on a worker thread. Returns at once if the image is already
        there (unless ``force``). The file is streamed to a temporary file next to its
        destination and hashed on the way (sha256, and sha512 where the catalogue gives
        that instead or too); only a verified, well-formed download is
        renamed into place. Any failure raises ImagePullFailed and leaves nothing behind.
        ``url_override`` (host side only, e.g. a mirror) changes where the bytes come
        from, never the expected checksum.
        """
        img = self.get(validate_name(name))
        if img.source != "remote" or img.disk is None:
            hint = f" (build it with {img.build})" if img.build else ""
            raise errors.ValidationFailed(
                f"image {name!r} is {img.source}, only remote images can be pulled{hint}"
            )
        url = url_override or img.url
        assert url is not None
        if not url.startswith(("http://", "https://")):
            raise errors.ValidationFailed(f"only http(s) URLs can be pulled, not {url!r}")
        expected = {a: v for a, v in (("sha256", img.sha256), ("sha512", img.sha512)) if v}
        if not expected:
            raise errors.ImagePullFailed(
                f"image {name!r} has no checksum in the catalogue; refusing an unverified pull",
                image=name,
            )
        with self._lock(name):
            if img.available and not force:
                return img
            target_dir = img.disk.parent
            created_dir = not target_dir.exists()
            target_dir.mkdir(parents=True, exist_ok=True)
            tmp: Path | None = None
            try:
                fd, tmp_name = tempfile.mkstemp(prefix=".pull-", suffix=".part", dir=target_dir)
                tmp = Path(tmp_name)
                with os.fdopen(fd, "wb") as out:
                    digests = self._download(url, out, progress, list(expected))
                for algo, want in expected.items():
                    if digests[algo] != want:
                        raise errors.ImagePullFailed(
                            f"checksum mismatch for {name!r}: expected {algo} {want}, "
                            f"got {digests[algo]}",
                            image=name,
                            url=url,
                            algorithm=algo,
                            expected=want,
                            actual=digests[algo],
                        )
                try:
                    _check_disk(tmp, img.format)
                except errors.ValidationFailed as exc:
                    raise errors.ImagePullFailed(
                        f"downloaded {name!r} is not a usable {img.format} image: {exc.message}",
                        image=name,
                        url=url,
                    ) from exc
                os.replace(tmp, img.disk)
                tmp = None
                meta = {
                    "name": name,
                    "source": "remote",
                    "url": url,
                    **digests,
                    "format": img.format,
                    "disk": img.disk.name,
                    "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                (target_dir / _META).write_text(json.dumps(meta, indent=2) + "\n")
            except BaseException:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)
                if created_dir:
                    shutil.rmtree(target_dir, ignore_errors=True)
                raise
        return self.get(name)

    @staticmethod
    def _download(
        url: str, out: IO[bytes], progress: ProgressFn | None, algorithms: builtins.list[str]
    ) -> dict[str, str]:
        """Stream ``url`` into ``out``; return the hex digests of the bytes."""
        hashes = {a: hashlib.new(a) for a in algorithms}
        done = 0
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "hypermachine"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if progress:
                    progress(0, total)
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                if total is not None and done != total:
                    raise errors.ImagePullFailed(
                        f"download of {url} was cut short: {done} of {total} bytes", url=url
                    )
        except urllib.error.HTTPError as exc:
            raise errors.ImagePullFailed(
                f"download of {url} failed: HTTP {exc.code} {exc.reason}", url=url, status=exc.code
            ) from exc
        except urllib.error.URLError as exc:
            raise errors.ImagePullFailed(
                f"download of {url} failed: {exc.reason}", url=url, reason=str(exc.reason)
            ) from exc
        except (OSError, TimeoutError, ValueError, http.client.HTTPException) as exc:
            raise errors.ImagePullFailed(
                f"download of {url} failed: {exc}", url=url, reason=str(exc)
            ) from exc
        return {a: h.hexdigest() for a, h in hashes.items()}

    # -- sideload --------------------------------------------------------------------

    def sideload(self, name: str, path: Path, *, verify: bool = True) -> Image:
        """Provide a remote catalogue image from a local file instead of downloading it.

        With ``verify`` the file must match the catalogue's checksum (an offline copy
        of the real image). Without it the file is recorded as a *stand-in* — shown as
        such in the catalogue — for hosts that cannot download (CLI only).
        """
        img = self.get(validate_name(name))
        if img.source != "remote" or img.disk is None:
            raise errors.ValidationFailed(f"image {name!r} is {img.source}, not a remote image")
        path = Path(path)
        _check_disk(path, img.format)
        digests: dict[str, str] = {}
        if verify:
            expected = {a: v for a, v in (("sha256", img.sha256), ("sha512", img.sha512)) if v}
            with path.open("rb") as fh:
                digests = {a: hashlib.file_digest(fh, a).hexdigest() for a in expected}
                for algo, want in expected.items():
                    if digests[algo] != want:
                        raise errors.ValidationFailed(
                            f"{path.name} does not match the catalogue's {algo} for {name!r}",
                            expected=want,
                            actual=digests[algo],
                        )
        with self._lock(name):
            if img.available:
                raise errors.NameTaken(f"image {name!r} is already on disk", image=name)
            img.disk.parent.mkdir(parents=True, exist_ok=True)
            staging = img.disk.with_name(f".sideload-{img.disk.name}")
            try:
                _copy_sparse(path, staging)
                os.replace(staging, img.disk)
            finally:
                staging.unlink(missing_ok=True)
            meta = {
                "name": name,
                "source": "remote",
                "sideloaded_from": path.name,
                "verified": verify,
                **digests,
                "format": img.format,
                "disk": img.disk.name,
                "sideloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            (img.disk.parent / _META).write_text(json.dumps(meta, indent=2) + "\n")
        return self.get(name)

    # -- import ----------------------------------------------------------------------

    def import_file(
        self,
        name: str,
        path: Path,
        *,
        boot: Boot = "disk",
        kernel: Path | None = None,
        initrd: Path | None = None,
        append: str = "",
        description: str = "",
        os_name: str = "unknown",
    ) -> Image:
        """Copy a host disk image (qcow2 or raw) into ``store_dir/<name>/`` (CLI only).

        The format is detected with ``qemu-img info``; other formats, backing files and
        external data files are rejected. With ``boot="kernel"``, ``kernel`` (and
        optionally ``initrd``) are copied too and ``append`` becomes the image's fixed
        kernel command line. A name that already exists raises NameTaken.
        """
        validate_name(name)
        if boot not in get_args(Boot):
            raise errors.ValidationFailed(f"boot must be 'disk' or 'kernel', not {boot!r}")
        append = _validate_append(append)
        if boot == "kernel" and kernel is None:
            raise errors.ValidationFailed("boot='kernel' needs a kernel file")
        if boot == "disk" and (kernel is not None or initrd is not None or append):
            raise errors.ValidationFailed("kernel, initrd and append only go with boot='kernel'")
        path = Path(path)
        fmt = _check_disk(path)
        for extra in (kernel, initrd):
            if extra is not None and not Path(extra).is_file():
                raise errors.ValidationFailed(f"{extra} is not a regular file")

        with self._lock(name):
            if name in self.names() or (self.store_dir / name).exists():
                raise errors.NameTaken(f"an image called {name!r} already exists", image=name)
            self.store_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".import-{name}-", dir=self.store_dir))
            try:
                disk_name = f"disk.{fmt}"
                _copy_sparse(path, staging / disk_name)
                meta: dict[str, object] = {
                    "name": name,
                    "description": description or f"imported from {path.name}",
                    "os": os_name,
                    "boot": boot,
                    "format": fmt,
                    "source": "imported",
                    "disk": disk_name,
                    "append": append,
                    "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                if kernel is not None:
                    _copy_sparse(Path(kernel), staging / "kernel")
                    meta["kernel"] = "kernel"
                if initrd is not None:
                    _copy_sparse(Path(initrd), staging / "initrd")
                    meta["initrd"] = "initrd"
                (staging / _META).write_text(json.dumps(meta, indent=2) + "\n")
                os.rename(staging, self.store_dir / name)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return self.get(name)

    def remove(self, name: str) -> None:
        """Delete a pulled or imported image's files (built-in images: rebuild instead)."""
        img = self.get(validate_name(name))
        if img.source == "builtin":
            raise errors.ValidationFailed(f"image {name!r} is built-in; it cannot be removed")
        with self._lock(name):
            shutil.rmtree(self.store_dir / name, ignore_errors=True)


def _stand_in_note(directory: Path) -> str | None:
    """The stand-in note of a remote image provided by an unverified local file."""
    try:
        meta = json.loads((directory / _META).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(meta, dict) and meta.get("verified") is False:
        return f"stand-in: unverified local file {meta.get('sideloaded_from')!s}"
    return None


def _copy_sparse(src: Path, dst: Path) -> None:
    """Copy keeping holes (raw images are mostly holes)."""
    try:
        subprocess.run(
            ["cp", "--sparse=always", "--reflink=auto", "--", str(src), str(dst)],
            check=True,
            capture_output=True,
            timeout=3600,
        )
    except (FileNotFoundError, subprocess.CalledProcessError):
        shutil.copyfile(src, dst)
