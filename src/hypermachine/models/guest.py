"""Reaching into a guest (docs/guest.md): exec, files, its network counters."""

from __future__ import annotations

import base64
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .base import _Strict

__all__ = [
    "ExecOutput",
    "ExecRequest",
    "ExecResult",
    "ExecStatus",
    "FileContent",
    "FileReadRequest",
    "FileWriteRequest",
    "FileWritten",
    "GuestPath",
    "InterfaceStats",
]


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


_MAX_ARG = 64 * 1024


def _no_nul(value: str, what: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character")
    return value


def _check_b64(value: str | None) -> str | None:
    if value is None:
        return None
    import binascii

    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError("not valid base64") from err
    return value


class ExecRequest(_Strict):
    """A command to run in the guest through qemu-ga (argv, never a shell string)."""

    command: list[Annotated[str, Field(max_length=_MAX_ARG)]] = Field(
        min_length=1, max_length=4096, description="argv; command[0] is looked up in PATH"
    )
    env: dict[str, Annotated[str, Field(max_length=_MAX_ARG)]] = Field(
        default_factory=dict,
        max_length=256,
        description="added to a default environment (PATH, HOME, LANG)",
    )
    stdin: str | None = Field(default=None, description="text fed to the command's stdin")
    stdin_b64: str | None = Field(default=None, description="bytes fed to stdin, base64")
    timeout_s: float | None = Field(
        default=None, gt=0, description="kill the command after this long (server default/max)"
    )
    wait: bool = Field(default=True, description="false: return an exec id at once")

    @field_validator("command")
    @classmethod
    def _valid_command(cls, command: list[str]) -> list[str]:
        if not command[0]:
            raise ValueError("command[0] (the program) must not be empty")
        for arg in command:
            _no_nul(arg, "an argument")
        return command

    @field_validator("env")
    @classmethod
    def _valid_env(cls, env: dict[str, str]) -> dict[str, str]:
        for name, value in env.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"environment name {name!r} must match {_ENV_NAME.pattern}")
            _no_nul(value, f"environment value {name}")
        return env

    @field_validator("stdin_b64")
    @classmethod
    def _valid_b64(cls, value: str | None) -> str | None:
        return _check_b64(value)

    @model_validator(mode="after")
    def _one_stdin(self) -> ExecRequest:
        if self.stdin is not None and self.stdin_b64 is not None:
            raise ValueError("give stdin or stdin_b64, not both")
        return self


class ExecStatus(StrEnum):
    RUNNING = "running"
    EXITED = "exited"  # the command ended by itself (exit_code or signal set)
    TIMED_OUT = "timed_out"  # killed after timeout_s
    FAILED = "failed"  # the agent or the VM went away before the end; see error


class ExecResult(_Strict):
    """One command's outcome; output is text when valid UTF-8, else base64 in ``*_b64``."""

    exec_id: str
    vm_id: str
    command: list[str]
    status: ExecStatus
    exit_code: int | None = None
    signal: int | None = None
    stdout: str | None = ""
    stderr: str | None = ""
    stdout_b64: str | None = None
    stderr_b64: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    truncated: bool = False
    streamed: bool = Field(description="output was captured while running (wait=false)")
    duration_ms: int
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None


class ExecOutput(_Strict):
    """A piece of a running command's output, as streamed (SSE ``stdout``/``stderr``)."""

    stream: Literal["stdout", "stderr"]
    offset: int = Field(description="byte offset of this piece in its stream")
    text: str | None = None
    b64: str | None = None


def _guest_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("the guest path must be absolute")
    return _no_nul(value, "the guest path")


GuestPath = Annotated[str, Field(min_length=1, max_length=4096, description="absolute guest path")]


class FileReadRequest(_Strict):
    path: GuestPath

    @field_validator("path")
    @classmethod
    def _valid_path(cls, value: str) -> str:
        return _guest_path(value)


class FileWriteRequest(FileReadRequest):
    """Exactly one of ``text`` (written as UTF-8) or ``content_b64``."""

    text: str | None = None
    content_b64: str | None = None

    @field_validator("content_b64")
    @classmethod
    def _valid_b64(cls, value: str | None) -> str | None:
        return _check_b64(value)

    @model_validator(mode="after")
    def _one_content(self) -> FileWriteRequest:
        if (self.text is None) == (self.content_b64 is None):
            raise ValueError("give exactly one of text or content_b64")
        return self


class FileContent(_Strict):
    path: str
    size: int
    text: str | None = Field(description="the content when it is valid UTF-8")
    content_b64: str | None = Field(description="the content as base64 otherwise")


class FileWritten(_Strict):
    path: str
    size: int


class InterfaceStats(_Strict):
    """One guest network interface's counters, as qemu-ga reports them."""

    name: str
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
