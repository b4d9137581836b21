"""The image catalogue: loading, lookup errors, pull (real HTTP on 127.0.0.1), import."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypermachine import errors
from hypermachine.images import Catalogue, default_catalogue_file, validate_name

REPO = Path(__file__).resolve().parents[1]
needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")


def _qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


# --- a local HTTP server ------------------------------------------------------------


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    lie_about_length = False

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        length = len(body) + (1000 if self.lie_about_length else 0)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, type[_Files]]]:
    handler = type("Files", (_Files,), {"files": {}, "lie_about_length": False})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def qcow2_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img missing")
    p = tmp_path_factory.mktemp("src") / "small.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(p), "16M")
    return p.read_bytes()


def _write_catalogue(tmp_path: Path, extra: str = "") -> Catalogue:
    (tmp_path / "built" / "tiny").mkdir(parents=True)
    for f in ("vmlinux", "initrd.img", "disk.qcow2"):
        (tmp_path / "built" / "tiny" / f).write_bytes(b"x" * 10)
    cat = tmp_path / "catalogue.toml"
    cat.write_text(
        """
[[image]]
name = "tiny"
description = "test tiny"
os = "linux"
boot = "kernel"
format = "qcow2"
dir = "tiny"
disk = "disk.qcow2"
kernel = "vmlinux"
initrd = "initrd.img"
append = "console=ttyS0"
ready_marker = "HM-READY tiny"

[[image]]
name = "nothere"
description = "built image that was not built"
os = "linux"
boot = "kernel"
format = "qcow2"
dir = "nothere"
kernel = "vmlinux"
"""
        + extra
    )
    return Catalogue(cat, tmp_path / "built", tmp_path / "store")


def _remote(name: str, url: str, sha256: str, fmt: str = "qcow2") -> str:
    return f"""
[[image]]
name = "{name}"
description = "remote test image"
os = "test"
boot = "disk"
format = "{fmt}"
url = "{url}"
sha256 = "{sha256}"
"""


# --- catalogue ----------------------------------------------------------------------


def test_repository_catalogue_loads() -> None:
    cat = Catalogue(default_catalogue_file(), REPO / "images", REPO / ".no-store")
    images = {i.name: i for i in cat.list()}
    assert {"tiny", "debian-12", "ubuntu-22.04", "ubuntu-24.04", "debian-12-cloud"} <= set(images)
    tiny = images["tiny"]
    assert tiny.source == "builtin" and tiny.boot == "kernel"
    assert tiny.kernel == REPO / "images" / "tiny" / "vmlinux"
    assert "console=ttyS0" in tiny.append
    for name in ("ubuntu-22.04", "ubuntu-24.04", "debian-12-cloud"):
        img = images[name]
        assert img.source == "remote" and img.boot == "disk" and img.format == "qcow2"
        assert img.url and img.url.startswith("https://")
        assert img.sha256 or img.sha512
        assert img.disk == REPO / ".no-store" / name / "disk.qcow2"


def test_list_get_and_to_dict(tmp_path: Path) -> None:
    cat = _write_catalogue(tmp_path)
    assert [i.name for i in cat.list()] == ["tiny", "nothere"]
    tiny = cat.get("tiny")
    assert tiny.available and tiny.size_bytes == 30
    assert tiny.initrd == tmp_path / "built" / "tiny" / "initrd.img"
    assert not cat.get("nothere").available
    d = tiny.to_dict()
    assert d["name"] == "tiny" and d["available"] is True and d["source"] == "builtin"
    assert d["size_bytes"] == 30 and d["boot"] == "kernel" and d["format"] == "qcow2"
    assert str(tmp_path) not in json.dumps(d), "no host paths in the API view"
    assert "append" not in d


def test_unknown_image_lists_the_known_names(tmp_path: Path) -> None:
    cat = _write_catalogue(tmp_path)
    with pytest.raises(errors.ImageNotFound) as exc:
        cat.get("windows-95")
    assert exc.value.details["available"] == ["tiny", "nothere"]
    assert exc.value.status == 400


@pytest.mark.parametrize(
    "bad", ["../x", "a,b", "a\nb", "", "A", "-x", ".x", "x/y", "a" * 64, "a b", "é"]
)
def test_hostile_names_are_rejected(bad: str) -> None:
    with pytest.raises(errors.ValidationFailed):
        validate_name(bad)


@pytest.mark.parametrize("good", ["tiny", "debian-12", "ubuntu-24.04", "a", "x_y", "a" * 63])
def test_good_names(good: str) -> None:
    assert validate_name(good) == good


def test_catalogue_paths_cannot_escape(tmp_path: Path) -> None:
    cat = _write_catalogue(
        tmp_path,
        '\n[[image]]\nname = "evil"\nboot = "kernel"\ndir = "tiny"\nkernel = "../../etc/passwd"\n',
    )
    with pytest.raises(errors.HMError, match="relative"):
        cat.list()


# --- pull ---------------------------------------------------------------------------


def test_pull_verifies_checksum(
    tmp_path: Path, http_server: tuple[str, type[_Files]], qcow2_bytes: bytes
) -> None:
    base, handler = http_server
    handler.files["/img.qcow2"] = qcow2_bytes
    digest = hashlib.sha256(qcow2_bytes).hexdigest()
    cat = _write_catalogue(tmp_path, _remote("cloud", "https://example.invalid/x.qcow2", digest))
    assert not cat.get("cloud").available
    calls: list[tuple[int, int | None]] = []
    img = cat.pull("cloud", lambda d, t: calls.append((d, t)), url_override=f"{base}/img.qcow2")
    assert img.available and img.source == "remote"
    assert img.disk == tmp_path / "store" / "cloud" / "disk.qcow2"
    assert img.disk.read_bytes() == qcow2_bytes
    assert calls[0] == (0, len(qcow2_bytes)) and calls[-1] == (len(qcow2_bytes),) * 2
    meta = json.loads((tmp_path / "store" / "cloud" / "image.json").read_text())
    assert meta["sha256"] == digest
    assert sorted(p.name for p in (tmp_path / "store" / "cloud").iterdir()) == [
        "disk.qcow2",
        "image.json",
    ]
    # already there: no download (the server no longer has the file)
    handler.files.clear()
    assert cat.pull("cloud", url_override=f"{base}/img.qcow2").available


def test_pull_checksum_mismatch_leaves_nothing(
    tmp_path: Path, http_server: tuple[str, type[_Files]], qcow2_bytes: bytes
) -> None:
    base, handler = http_server
    handler.files["/img.qcow2"] = qcow2_bytes
    wrong = hashlib.sha256(b"something else").hexdigest()
    cat = _write_catalogue(tmp_path, _remote("cloud", f"{base}/img.qcow2", wrong))
    with pytest.raises(errors.ImagePullFailed) as exc:
        cat.pull("cloud")
    assert "checksum mismatch" in exc.value.message
    assert exc.value.details["expected"] == wrong
    assert exc.value.details["actual"] == hashlib.sha256(qcow2_bytes).hexdigest()
    assert exc.value.status == 502
    assert not (tmp_path / "store" / "cloud").exists()
    assert list((tmp_path / "store").iterdir()) == []
    assert not cat.get("cloud").available


def test_pull_rejects_a_download_that_is_not_the_declared_format(
    tmp_path: Path, http_server: tuple[str, type[_Files]]
) -> None:
    base, handler = http_server
    body = b"<html>not an image</html>"
    handler.files["/page"] = body
    cat = _write_catalogue(
        tmp_path, _remote("cloud", f"{base}/page", hashlib.sha256(body).hexdigest())
    )
    with pytest.raises(errors.ImagePullFailed, match="not a usable qcow2"):
        cat.pull("cloud")
    assert not (tmp_path / "store" / "cloud").exists()


def test_pull_truncated_download_fails(
    tmp_path: Path, http_server: tuple[str, type[_Files]], qcow2_bytes: bytes
) -> None:
    base, handler = http_server
    handler.files["/img.qcow2"] = qcow2_bytes
    handler.lie_about_length = True
    digest = hashlib.sha256(qcow2_bytes).hexdigest()
    cat = _write_catalogue(tmp_path, _remote("cloud", f"{base}/img.qcow2", digest))
    with pytest.raises(errors.ImagePullFailed):
        cat.pull("cloud")
    assert not (tmp_path / "store" / "cloud").exists()


def test_pull_http_404_and_server_down(
    tmp_path: Path, http_server: tuple[str, type[_Files]]
) -> None:
    base, _ = http_server
    cat = _write_catalogue(tmp_path, _remote("cloud", f"{base}/missing", "0" * 64))
    with pytest.raises(errors.ImagePullFailed, match="HTTP 404"):
        cat.pull("cloud")
    # a port nobody listens on
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with pytest.raises(errors.ImagePullFailed) as exc:
        cat.pull("cloud", url_override=f"http://127.0.0.1:{dead}/img.qcow2")
    assert "refused" in exc.value.message.lower()
    assert not (tmp_path / "store" / "cloud").exists()


def test_pull_only_remote_images(tmp_path: Path) -> None:
    cat = _write_catalogue(tmp_path)
    with pytest.raises(errors.ValidationFailed):
        cat.pull("tiny")
    with pytest.raises(errors.ImageNotFound):
        cat.pull("nope")
    with pytest.raises(errors.ValidationFailed):
        cat.pull("../etc")


# --- import -------------------------------------------------------------------------


@needs_qemu_img
@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_import_qcow2_and_raw(tmp_path: Path, fmt: str) -> None:
    cat = _write_catalogue(tmp_path)
    src = tmp_path / f"mine.{fmt}"
    _qemu_img("create", "-q", "-f", fmt, str(src), "32M")
    img = cat.import_file("mine", src)
    assert img.source == "imported" and img.format == fmt and img.boot == "disk"
    assert img.available and img.disk == tmp_path / "store" / "mine" / f"disk.{fmt}"
    assert img.disk.stat().st_size == src.stat().st_size
    assert "mine" in [i.name for i in cat.list()]
    assert cat.get("mine").to_dict()["source"] == "imported"
    with pytest.raises(errors.NameTaken):
        cat.import_file("mine", src)
    with pytest.raises(errors.NameTaken):
        cat.import_file("tiny", src)  # catalogue names are taken too
    cat.remove("mine")
    assert "mine" not in cat.names()


@needs_qemu_img
def test_import_kernel_boot(tmp_path: Path) -> None:
    cat = _write_catalogue(tmp_path)
    src = tmp_path / "d.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(src), "8M")
    k = tmp_path / "bzImage"
    k.write_bytes(b"kernel")
    img = cat.import_file("kb", src, boot="kernel", kernel=k, append="console=ttyS0")
    assert img.boot == "kernel" and img.kernel is not None and img.kernel.read_bytes() == b"kernel"
    assert img.append == "console=ttyS0" and img.initrd is None
    with pytest.raises(errors.ValidationFailed):
        cat.import_file("kb2", src, boot="kernel", kernel=k, append="a\nb")


@needs_qemu_img
def test_import_rejects_non_images_and_backing_files(tmp_path: Path) -> None:
    cat = _write_catalogue(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a disk\n")
    with pytest.raises(errors.ValidationFailed, match="not a disk image"):
        cat.import_file("notes", text)
    vmdk = tmp_path / "d.vmdk"
    _qemu_img("create", "-q", "-f", "vmdk", str(vmdk), "8M")
    with pytest.raises(errors.ValidationFailed, match="vmdk"):
        cat.import_file("vm", vmdk)
    base = tmp_path / "base.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(base), "8M")
    overlay = tmp_path / "overlay.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay))
    with pytest.raises(errors.ValidationFailed, match="backing"):
        cat.import_file("ov", overlay)
    with pytest.raises(errors.ValidationFailed):
        cat.import_file("dir", tmp_path)
    assert not (tmp_path / "store").exists() or list((tmp_path / "store").iterdir()) == []


@needs_qemu_img
@pytest.mark.parametrize("bad", ["../x", "a,b", "a\nb", "x/y", ""])
def test_import_rejects_hostile_names(tmp_path: Path, bad: str) -> None:
    cat = _write_catalogue(tmp_path)
    src = tmp_path / "d.raw"
    _qemu_img("create", "-q", "-f", "raw", str(src), "1M")
    with pytest.raises(errors.ValidationFailed):
        cat.import_file(bad, src)
    assert not (tmp_path / "store").exists()
    assert not (tmp_path / "x").exists()
