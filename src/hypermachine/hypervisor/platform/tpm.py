"""A VM's TPM 2.0: one ``swtpm`` per VM, supervised like its QEMU.

Life of a vTPM:

* **create** — :func:`setup` runs ``swtpm_setup`` once (EK and platform certificates,
  NVRAM locked, SHA-256 PCR bank) into ``<vm dir>/tpm`` (0700). Nothing is started.
* **start** — :func:`start` launches ``swtpm socket --daemon --terminate`` before
  QEMU, with its control socket and pidfile in the VM's run dir, and returns once
  the socket exists. QEMU connects with ``-chardev socket`` + ``-tpmdev emulator``.
* **stop** — with ``--terminate`` swtpm exits when QEMU closes the connection;
  :func:`stop` (called once QEMU has exited) ends one that is still there.
* **restart of the server** — swtpm, like QEMU, is not our child: :func:`find`
  re-finds it from the pidfile, checking its command line names this VM's state dir.
* **delete** — the state dir goes with the VM dir.
* **live migration** — each QEMU needs its own swtpm on its own state dir (swtpm 0.7.1
  locks it, with no hand-over), so the destination's swtpm starts on an empty
  ``tpm-<hex>`` and the state arrives in QEMU's stream; afterwards ``tpm.current``
  names that dir (:func:`state_dir_of`), since a running swtpm's dir cannot be renamed.

When QEMU runs as an unprivileged user (:mod:`.confine`), so do ``swtpm`` and
``swtpm_setup``: nothing in a folder that user owns is written by root. The EK and
platform certificates are then signed by a local CA of this data dir
(``<data dir>/swtpm/localca``, the user's), since the system's
(``/var/lib/swtpm-localca``) is root's; the two config files pointing
``swtpm_setup`` at it are root's, in a folder the user cannot write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import psutil
import trio

from ...config import Settings
from ...errors import HypervisorError
from ..vmfiles import nofollow
from ..vmfiles.confine import QemuIdentity
from ..vmfiles.layout import VmPaths

__all__ = ["TpmPaths", "find", "set_state_dir", "setup", "start", "state_dir_of", "stop"]

log = logging.getLogger(__name__)

_STATE_FILE = "tpm2-00.permall"
_DEFAULT_DIR = "tpm"
_CURRENT = "tpm.current"  # names the state dir when a migration moved it
_DIR_NAME = re.compile(r"tpm(-[0-9a-f]{8})?")


def state_dir_of(vm_dir: Path) -> Path:
    """The VM's TPM state dir: ``tpm``, or the one ``tpm.current`` names (a valid name
    only: the file lives in a folder the QEMU user may write)."""
    try:
        name = nofollow.read_file(vm_dir / _CURRENT, limit=64).decode().strip()
    except (OSError, UnicodeDecodeError):
        return vm_dir / _DEFAULT_DIR
    return vm_dir / (name if _DIR_NAME.fullmatch(name) else _DEFAULT_DIR)


def set_state_dir(vm_dir: Path, state_dir: Path) -> None:
    """Make ``state_dir`` (a ``tpm-<hex>`` in ``vm_dir``) the VM's TPM state dir."""
    if state_dir.parent != vm_dir or not _DIR_NAME.fullmatch(state_dir.name):
        raise ValueError(f"not a TPM state dir of {vm_dir}: {state_dir}")
    nofollow.write_file(vm_dir / _CURRENT, state_dir.name.encode())


@dataclass(frozen=True)
class TpmPaths:
    state_dir: Path  # persistent, with the VM
    socket: Path  # run dir
    pidfile: Path  # run dir
    log: Path  # with the VM, so it outlives a stop

    @classmethod
    def for_vm(cls, paths: VmPaths, state_dir: Path | None = None) -> TpmPaths:
        """The VM's TPM files; ``state_dir`` instead of its current one (a migration's
        destination)."""
        return cls(
            state_dir=state_dir or state_dir_of(paths.vm_dir),
            socket=paths.run_dir / "swtpm.sock",
            pidfile=paths.run_dir / "swtpm.pid",
            log=paths.vm_dir / "swtpm.log",
        )

    @property
    def initialised(self) -> bool:
        return (self.state_dir / _STATE_FILE).is_file()


def _swtpm_path(path: Path) -> str:
    """swtpm's options are comma-separated with no escape: refuse a path with a comma."""
    text = str(path)
    if "," in text or not path.is_absolute():
        raise ValueError(f"swtpm cannot take the path {text!r}")
    return text


def _localca_config(settings: Settings, identity: QemuIdentity) -> Path:
    """The ``swtpm_setup`` config making ``identity``'s own local CA sign the certificates."""
    folder = settings.data_dir / "swtpm"
    folder.mkdir(mode=0o755, exist_ok=True)
    os.chown(folder, 0, 0, follow_symlinks=False)
    statedir = folder / "localca"
    statedir.mkdir(mode=0o700, exist_ok=True)
    os.chown(statedir, identity.uid, identity.gid, follow_symlinks=False)
    ca = _swtpm_path(statedir)
    localca = folder / "swtpm-localca.conf"
    nofollow.write_file(
        localca,
        f"statedir = {ca}\nsigningkey = {ca}/signkey.pem\n"
        f"issuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n".encode(),
        0o644,
    )
    setup_conf = folder / "swtpm_setup.conf"
    nofollow.write_file(
        setup_conf,
        "create_certs_tool = /usr/bin/swtpm_localca\n"
        f"create_certs_tool_config = {_swtpm_path(localca)}\n"
        "create_certs_tool_options = /etc/swtpm-localca.options\n"
        "active_pcr_banks = sha256\n".encode(),
        0o644,
    )
    return setup_conf


async def _run(argv: list[str], timeout_s: float, what: str, identity: QemuIdentity | None) -> None:
    as_user = identity.popen_kwargs() if identity is not None else {}
    try:
        with trio.fail_after(timeout_s):
            result = await trio.run_process(
                argv, capture_stdout=True, capture_stderr=True, check=False, **as_user
            )
    except trio.TooSlowError as err:
        raise HypervisorError(f"{what} did not finish within {timeout_s:g} s") from err
    except OSError as err:
        raise HypervisorError(f"{what} could not run: {err.strerror}", argv0=argv[0]) from err
    if result.returncode != 0:
        output = (result.stderr or result.stdout or b"").decode(errors="replace").strip()
        raise HypervisorError(
            f"{what} failed (exit status {result.returncode})", output=output[-500:]
        )


async def setup(tpm: TpmPaths, settings: Settings, identity: QemuIdentity | None) -> None:
    """Create the TPM's state once (as ``identity``, which owns the VM's folder by then);
    a VM that has it keeps it.

    Raises:
        HypervisorError: swtpm_setup failed or took longer than its budget.
    """
    if tpm.initialised:
        return
    config = [] if identity is None else ["--config", str(_localca_config(settings, identity))]
    argv = [
        settings.swtpm_setup_binary, "--tpm2",
        "--tpmstate", _swtpm_path(tpm.state_dir),
        "--create-ek-cert", "--create-platform-cert", "--lock-nvram",
        "--pcr-banks", "sha256", "--not-overwrite",
        "--logfile", _swtpm_path(tpm.log), *config,
    ]  # fmt: skip
    _make_state_dir(tpm, identity)
    await _run(argv, settings.swtpm_setup_timeout_s, "swtpm_setup", identity)


def _make_state_dir(tpm: TpmPaths, identity: QemuIdentity | None) -> None:
    with contextlib.suppress(FileExistsError):  # mkdir never follows a symlink
        os.mkdir(tpm.state_dir, 0o700)
        if identity is not None:
            os.chown(tpm.state_dir, identity.uid, identity.gid, follow_symlinks=False)


async def start(
    tpm: TpmPaths, settings: Settings, identity: QemuIdentity | None, *, incoming: bool = False
) -> int:
    """Start the VM's swtpm (before QEMU, as ``identity``, which owns the VM's folders by
    then); return its pid once its socket is there. ``incoming``: its state will come in
    QEMU's migration stream, so none is made.

    Raises:
        HypervisorError: it would not start within ``swtpm_start_timeout_s``.
    """
    if incoming:
        _make_state_dir(tpm, identity)
    else:
        await setup(tpm, settings, identity)  # a VM created before it asked for a vTPM
    stop(tpm)  # a stale one from a crash would hold the state lock
    argv = [
        settings.swtpm_binary, "socket", "--tpm2",
        "--tpmstate", f"dir={_swtpm_path(tpm.state_dir)},mode=0600",
        "--ctrl", f"type=unixio,path={_swtpm_path(tpm.socket)},mode=0600",
        "--pid", f"file={_swtpm_path(tpm.pidfile)}",
        "--log", f"file={_swtpm_path(tpm.log)},level=1",
        "--terminate", "--daemon",
    ]  # fmt: skip
    budget = settings.swtpm_start_timeout_s
    await _run(argv, budget, "swtpm", identity)  # --daemon: returns once it has forked
    # The daemon writes its pidfile and socket itself; nothing signals that: poll.
    with trio.move_on_after(budget):
        while (pid := find(tpm)) is None or not tpm.socket.exists():
            await trio.sleep(0.02)
        return pid
    stop(tpm)
    raise HypervisorError(f"swtpm did not open its socket within {budget:g} s")


def find(tpm: TpmPaths) -> int | None:
    """The pid of this VM's running swtpm, checked by its state dir on its command line."""
    try:
        pid = int(nofollow.read_file(tpm.pidfile, limit=32).strip())
        process = psutil.Process(pid)
        cmdline = process.cmdline()
        zombie = process.status() == psutil.STATUS_ZOMBIE
    except (OSError, ValueError, psutil.Error):
        return None
    if zombie or not any(str(tpm.state_dir) in arg for arg in cmdline):
        return None
    return pid


def stop(tpm: TpmPaths) -> None:
    """End the VM's swtpm if it is still running (it normally exits with QEMU)."""
    pid = find(tpm)
    if pid is None:
        return
    log.info("stopping swtpm pid %d (%s)", pid, tpm.state_dir)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
