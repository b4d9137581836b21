"""``vm exec | cp | logs | script``: inside the guest, through the SDK."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..client import Client
from ..errors import HMError, ValidationFailed
from ..models import ExecOutput, ExecResult, ExecStatus
from .lifecycle import pairs
from .output import Output

__all__ = ["copy", "exec_command", "exit_status", "fresh_text", "run_script", "show_logs"]

_TIMED_OUT = 124  # as timeout(1) exits
_FOLLOW_EVERY_S = 1.0
_FOLLOW_WINDOW = 500  # lines read each second by logs -f


def exit_status(result: ExecResult, out: Output) -> int:
    """The command's own exit status (128 + N for signal N, 124 for a timeout)."""
    if result.status is ExecStatus.TIMED_OUT:
        out.note(f"the command was killed after its timeout ({result.duration_ms} ms)")
        return _TIMED_OUT
    if result.status is ExecStatus.FAILED:
        out.note(f"[bold red]error[/]: the command did not finish: {result.error}")
        return 1
    if result.signal is not None:
        return 128 + result.signal
    return result.exit_code or 0


def _write_piece(piece: ExecOutput) -> None:
    data = base64.b64decode(piece.b64) if piece.b64 is not None else (piece.text or "").encode()
    stream = sys.stdout if piece.stream == "stdout" else sys.stderr
    stream.buffer.write(data)
    stream.flush()


def exec_command(args: argparse.Namespace, hm: Client, out: Output) -> int:
    """Stream the command's output as it comes and exit with its status."""
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        raise ValidationFailed("give the command after --: hypermachine vm exec VM -- uname -a")
    if argv[0].startswith("-") and "--" in argv:
        raise ValidationFailed(
            "options go before the VM: hypermachine vm exec [OPTIONS] VM -- COMMAND",
            command=argv,
        )
    vm = hm.vms.get(args.vm)
    stdin = sys.stdin.buffer.read() if args.interactive else None
    env = pairs(args.env, "environment variables")
    if out.json:
        result = vm.exec(
            argv, timeout=args.timeout, stdin=stdin, env=env, wait_agent=args.wait_agent
        )
        out.model(result)
        return exit_status(result, out)
    stream = vm.exec_stream(
        argv, timeout=args.timeout, stdin=stdin, env=env, wait_agent=args.wait_agent
    )
    for piece in stream:
        if isinstance(piece, ExecResult):
            return exit_status(piece, out)
        _write_piece(piece)
    raise HMError("the output stream ended before the command did")


@dataclass(frozen=True)
class _End:
    """One side of ``vm cp``: a guest path on a VM, or a local path (``-``: stdin/stdout)."""

    vm: str | None
    path: str


def _end(text: str) -> _End:
    """``VM:/abs/path`` is in the guest; anything else is local."""
    vm, sep, path = text.partition(":")
    if sep and vm and "/" not in vm and path.startswith("/"):
        return _End(vm, path)
    return _End(None, text)


def _local_bytes(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


def _write_local(path: str, data: bytes) -> None:
    if path == "-":
        out: BinaryIO = sys.stdout.buffer
        out.write(data)
        out.flush()
        return
    target = Path(path)
    if target.is_dir():
        raise ValidationFailed(f"{path} is a folder: name the file to write", path=path)
    target.write_bytes(data)


def copy(args: argparse.Namespace, hm: Client, out: Output) -> int:
    """``vm cp ./f VM:/tmp/f`` (to the guest) or ``vm cp VM:/tmp/f ./f`` (from it)."""
    source, dest = _end(args.source), _end(args.dest)
    if (source.vm is None) == (dest.vm is None):
        raise ValidationFailed("one side of cp is VM:/absolute/path and the other is local")
    if dest.vm is not None:
        written = hm.vms.get(dest.vm).files.write(
            dest.path, _local_bytes(source.path), wait_agent=args.wait_agent
        )
        out.note(f"wrote {written.size} bytes to {dest.vm}:{written.path}")
    else:
        assert source.vm is not None
        data = hm.vms.get(source.vm).files.read(source.path, wait_agent=args.wait_agent)
        _write_local(dest.path, data)
        if dest.path != "-":
            out.note(f"read {len(data)} bytes into {dest.path}")
    return 0


def fresh_text(previous: list[str], current: list[str]) -> str:
    """What to write after ``previous`` (shown with its last line unterminated) to show ``current``.

    The log is read as lines, and its last line may still be growing: the overlap is
    the longest end of ``previous`` that starts ``current``, its last line allowed to
    have grown since.
    """
    if not previous:
        return "\n".join(current)
    for size in range(min(len(previous), len(current)), 0, -1):
        *head, last = previous[-size:]
        if current[: size - 1] == head and current[size - 1].startswith(last):
            grown = current[size - 1][len(last) :]
            return grown + "".join("\n" + line for line in current[size:])
    return "".join("\n" + line for line in current)


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def show_logs(args: argparse.Namespace, hm: Client, out: Output) -> int:
    """The console log's tail; ``-f`` goes on printing what the guest writes.

    There is no stream of the log, so ``-f`` reads its end again every second and
    writes what is new, as ``tail -f`` does with a file.
    """
    vm = hm.vms.get(args.vm)
    previous = vm.logs(args.tail)
    _write("\n".join(previous) + ("" if args.follow or not previous else "\n"))
    while args.follow:
        time.sleep(_FOLLOW_EVERY_S)
        current = vm.logs(max(args.tail, _FOLLOW_WINDOW))
        _write(fresh_text(previous, current))
        previous = current
    return 0


def run_script(args: argparse.Namespace, hm: Client, out: Output) -> int:
    """Run a Rhai file bound to the VM: its printed lines, then its result as JSON."""
    code = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    try:
        script_args = json.loads(args.args)
    except json.JSONDecodeError as err:
        raise ValidationFailed(f"--args is not JSON: {err}") from None
    vm = hm.vms.get(args.vm)
    try:
        response = vm.script(code, script_args)
    except HMError as err:  # a failed script: what it printed before it failed
        printed = err.details.get("output")
        for line in printed if isinstance(printed, list) else []:
            out.line(str(line))
        raise
    if out.json:
        out.model(response)
        return 0
    for line in response.output:
        out.line(line)
    out.line(json.dumps({"result": response.result, "type": response.result_type}))
    return 0
