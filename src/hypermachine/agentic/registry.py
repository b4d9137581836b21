"""The one registry of operations every agent-facing face is generated from.

An :class:`Operation` is a snake_case name, an LLM-friendly description, a
pydantic input model, an async handler calling the VM manager, the errors it can
raise and the REST route that performs the same operation. The provider tool
lists, ``/agentic/execute``, the MCP server, the ontology and the OpenAPI
document all read this list, so none of them can drift from another. Adding an
operation (host capabilities, exec in the guest, files...) is one more entry in
:mod:`.operations`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ..errors import HMError, UnknownTool, ValidationFailed

__all__ = ["TOOL_NAME", "HttpRoute", "Operation", "QueryParam", "Registry"]

TOOL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""snake_case, and inside every provider's name rules (OpenAI, Anthropic, Gemini, MCP)."""

Handler = Callable[[Any, Any], Awaitable[object]]
"""``handler(services, validated_input) -> result`` (a model, or a JSON-able dict)."""


@dataclass(frozen=True)
class QueryParam:
    """One query-string parameter of a REST route, for the OpenAPI document."""

    name: str
    schema: dict[str, Any]
    description: str
    required: bool = False
    repeated: bool = False


@dataclass(frozen=True)
class HttpRoute:
    """The REST route that performs the same operation.

    ``path`` uses OpenAPI templating (``/api/v1/vms/{vm_id}``); every ``{name}`` is
    a field of the operation's input model. ``body`` is the REST body model (None:
    no body); ``body_optional`` means an empty body is accepted as ``{}``.
    """

    method: str
    path: str
    status: int = 200
    body: type[BaseModel] | None = None
    body_optional: bool = False
    query: tuple[QueryParam, ...] = ()
    headers: tuple[QueryParam, ...] = ()
    also: tuple[int, ...] = ()
    """Other success statuses (202 for "accepted, not yet done")."""

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


@dataclass(frozen=True)
class Operation:
    """One thing an agent (or a REST client) can ask HyperMachine to do."""

    name: str
    title: str
    summary: str
    """What it does and when to use it (a few sentences)."""
    returns: str
    """What a successful call returns, in words."""
    input: type[BaseModel]
    handler: Handler
    http: HttpRoute | None
    """The REST route doing the same, or None for a tool-only operation (its REST
    counterpart has another shape, e.g. raw file bytes instead of JSON)."""
    result: type[BaseModel] | None = None
    """The model of a successful result, or None for an ad-hoc object."""
    errors: tuple[type[HMError], ...] = ()
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    resource: str = "VirtualMachine"
    """The ontology class the operation acts on."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        """The text an LLM reads: what, when, what comes back, what errors mean."""
        lines = [self.summary.strip(), f"Returns: {self.returns.strip()}"]
        codes = [_ERROR_MEANINGS.get(cls.code, cls.code) for cls in self.all_errors]
        lines.append("Errors come back as {error: {code, message, details}}: " + "; ".join(codes))
        return "\n".join(lines)

    @property
    def all_errors(self) -> tuple[type[HMError], ...]:
        """The declared errors plus the one every operation can raise (bad arguments)."""
        return (ValidationFailed, *(e for e in self.errors if e is not ValidationFailed))

    async def run(self, services: Any, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``arguments`` against the input model, run, and return JSON-able data.

        Raises:
            pydantic.ValidationError: the arguments do not fit the input model.
            HMError: whatever the operation refuses (see ``errors``).
        """
        validated = self.input.model_validate(dict(arguments))
        return to_jsonable(await self.handler(services, validated))


_ERROR_MEANINGS = {
    "VALIDATION_ERROR": "VALIDATION_ERROR: a missing or invalid argument (details name it)",
    "VM_NOT_FOUND": "VM_NOT_FOUND: no VM has that id (call list_vms)",
    "INVALID_STATE": (
        "INVALID_STATE: not allowed in the VM's current state (details: current, allowed)"
    ),
    "IMAGE_NOT_FOUND": "IMAGE_NOT_FOUND: no such image (call list_images)",
    "NAME_TAKEN": "NAME_TAKEN: another VM already has this name",
    "CAPABILITY_UNAVAILABLE": (
        "CAPABILITY_UNAVAILABLE: this host cannot provide a requested feature (details say which)"
    ),
    "WAIT_TIMEOUT": "WAIT_TIMEOUT: the state was not reached in time (details: current)",
    "HYPERVISOR_ERROR": "HYPERVISOR_ERROR: QEMU failed; retrying may help",
    "SCRIPT_SYNTAX_ERROR": "SCRIPT_SYNTAX_ERROR: the script does not parse",
    "SCRIPT_RUNTIME_ERROR": "SCRIPT_RUNTIME_ERROR: the script failed while running",
    "SCRIPT_LIMIT_EXCEEDED": "SCRIPT_LIMIT_EXCEEDED: the script hit a time/memory/step limit",
    "UNSUPPORTED_LANGUAGE": "UNSUPPORTED_LANGUAGE: only rhai scripts are supported",
    "GUEST_AGENT_UNAVAILABLE": (
        "GUEST_AGENT_UNAVAILABLE: no guest agent answers yet (retry with wait_agent_s after a boot)"
    ),
    "GUEST_PATH_NOT_FOUND": "GUEST_PATH_NOT_FOUND: no such file in the guest",
    "NOT_CONFIDENTIAL": "NOT_CONFIDENTIAL: the VM has no memory encryption to attest",
    "GUEST_OPERATION_FAILED": "GUEST_OPERATION_FAILED: the guest could not do it (details say why)",
    "SNAPSHOT_NOT_FOUND": "SNAPSHOT_NOT_FOUND: the VM has no such snapshot (call list_snapshots)",
    "SNAPSHOT_REFUSED": (
        "SNAPSHOT_REFUSED: the VM's memory cannot be saved (details.reasons, from QEMU)"
    ),
    "QUOTA_EXCEEDED": "QUOTA_EXCEEDED: the tenant is at its VM or storage quota",
}


def to_jsonable(result: object) -> dict[str, Any]:
    """A handler's result as a JSON object (models are dumped in JSON mode)."""
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    if isinstance(result, dict):
        return result
    raise TypeError(f"an operation must return a model or a dict, not {type(result).__name__}")


class Registry:
    """An ordered, immutable set of operations, looked up by name."""

    def __init__(self, operations: Iterable[Operation]) -> None:
        self._ops: dict[str, Operation] = {}
        for op in operations:
            if not TOOL_NAME.match(op.name):
                raise ValueError(f"operation name {op.name!r} is not snake_case ≤ 64")
            if op.name in self._ops:
                raise ValueError(f"operation {op.name!r} is registered twice")
            params = set(op.http.path_params) if op.http else set()
            missing = params - set(op.input.model_fields)
            if missing:
                raise ValueError(f"{op.name}: path parameters {missing} are not input fields")
            self._ops[op.name] = op

    def __iter__(self) -> Iterator[Operation]:
        return iter(self._ops.values())

    def __len__(self) -> int:
        return len(self._ops)

    def names(self) -> list[str]:
        return list(self._ops)

    def get(self, name: str) -> Operation:
        """The operation called ``name``.

        Raises:
            UnknownTool: no such operation (details list the known names).
        """
        try:
            return self._ops[name]
        except KeyError:
            raise UnknownTool(
                f"no tool named {name!r}", name=name[:100], known=self.names()
            ) from None
