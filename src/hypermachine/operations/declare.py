"""What an operation is: its models, its access rule, its faces.

An :class:`Operation` is a snake_case name, an LLM-friendly description, a
pydantic input model, the :class:`Access` it needs, whether it mutates (then
every call is audited), an async handler receiving the :class:`Context` of the
call, and the REST route that offers it. The dispatcher
(:mod:`.dispatch`) is the only caller of handlers; every face (REST, agent
tools, MCP, scripts) goes through it, so validation, the access check and the
audit happen once, in one place.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from ..errors import HMError, UnknownTool, ValidationFailed

__all__ = [
    "TOOL_NAME",
    "Access",
    "Answer",
    "ByteStream",
    "Context",
    "Document",
    "EventStream",
    "HttpRoute",
    "Operation",
    "QueryParam",
    "RawJson",
    "Registry",
    "to_jsonable",
]

TOOL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
"""snake_case, and inside every provider's name rules (OpenAI, Anthropic, Gemini, MCP)."""


class Access(StrEnum):
    """Who may call an operation."""

    PUBLIC = "public"
    """Anyone, without a key (the documents an agent discovers the server with)."""
    KEY = "key"
    """Any authenticated caller (everyone in the open embedded default)."""
    TENANT = "tenant"
    """The tenant owning the VM named by the input's ``vm_id`` (or an admin)."""
    ADMIN = "admin"
    """An admin key: operations spanning every tenant."""


@dataclass(frozen=True)
class Context:
    """What a handler gets besides its validated input.

    ``vm`` is the VM of a ``TENANT`` operation, already found through the caller's
    scope; ``dispatch`` runs another operation as the same caller (a script's host
    calls); ``audit`` records an extra audit entry as the caller (a console closing).
    """

    caller: Any  # hypermachine.security.caller.Caller
    services: Any  # hypermachine.api.services.Services
    registry: Registry
    vm: Any  # hypermachine.models.Vm | None
    base_url: str
    dispatch: Callable[[str, Mapping[str, Any]], Awaitable[object]]
    audit: Callable[[str, str | None, str, Mapping[str, Any]], None]
    meter: Callable[[], Awaitable[None]]
    """Count one more request against the caller's rate limit (raises RateLimited)."""


Handler = Callable[[Context, Any], Awaitable[object]]
"""``handler(context, validated_input) -> result``."""


# -- results a handler may return besides a model or a dict ---------------------------


@dataclass(frozen=True)
class Answer:
    """A result with REST details: another success status, headers (the body is
    what tool faces see)."""

    body: object
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    """What the audit entry names when the input did not (the VM or key just made)."""


@dataclass(frozen=True)
class RawJson:
    """A JSON document already serialized (the fast listing path)."""

    text: str


@dataclass(frozen=True)
class Document:
    """A non-JSON document: an HTML page, Prometheus text, a static asset."""

    data: bytes | str
    content_type: str
    max_age: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EventStream:
    """Server-sent events: ``(event, data, id)`` triples, ``None`` for a keep-alive."""

    messages: AsyncIterator[tuple[str, object, str | None] | None]


@dataclass(frozen=True)
class ByteStream:
    """Raw bytes streamed to the client (a guest file)."""

    chunks: AsyncIterator[bytes]
    headers: Mapping[str, str] = field(default_factory=dict)


# -- the REST side of a declaration ----------------------------------------------------


@dataclass(frozen=True)
class QueryParam:
    """One query-string (or header) parameter filling the input field ``field``.

    Its OpenAPI schema is the field's own JSON Schema, so the document and the
    parser cannot disagree; ``repeated`` takes every occurrence as a list.
    """

    name: str
    field: str | None = None
    description: str = ""
    required: bool = False
    repeated: bool = False

    @property
    def target(self) -> str:
        return self.field or self.name


@dataclass(frozen=True)
class HttpRoute:
    """The REST route that performs the operation.

    ``path`` uses OpenAPI templating (``/api/v1/vms/{vm_id}``); every ``{name}`` is
    a field of the operation's input model. ``body`` is the JSON body model (None:
    no body), merged with the path and query into the input; ``raw_body`` puts
    the raw request bytes into the input field ``data`` instead. ``content`` is the
    media type of a success; ``websocket`` routes upgrade instead.
    """

    method: str
    path: str
    status: int = 200
    body: type[BaseModel] | None = None
    body_optional: bool = False
    raw_body: bool = False
    query: tuple[QueryParam, ...] = ()
    headers: tuple[QueryParam, ...] = ()
    also: tuple[int, ...] = ()
    """Other success statuses (202 for "accepted, not yet done")."""
    content: str = "application/json"
    websocket: bool = False
    slashed: tuple[str, ...] = ()
    """Path parameters whose value may contain ``/`` (a static file under a folder)."""

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


@dataclass(frozen=True)
class Operation:
    """One thing a client (person, program or agent) can ask HyperMachine to do."""

    name: str
    title: str
    summary: str
    """What it does and when to use it (a few sentences)."""
    returns: str
    """What a successful call returns, in words."""
    input: type[BaseModel]
    handler: Handler
    access: Access
    http: HttpRoute | None
    """The REST route, or None for an operation only tools or scripts call."""
    result: type[BaseModel] | None = None
    """The model of a successful result, or None for an ad-hoc object."""
    errors: tuple[type[HMError], ...] = ()
    mutates: bool = False
    """Changes something: every call is audited (denials are audited for all)."""
    audit_details: Callable[[Any], Mapping[str, Any]] | None = None
    """What the audit entry records of the input (argv, a path and size; never secrets)."""
    tool: bool = True
    """Offered as an agent tool (tool lists, /agentic/execute, MCP)."""
    destructive: bool = False
    idempotent: bool = False
    resource: str = "VirtualMachine"
    """The ontology class the operation acts on."""
    tag: str = "vms"
    """The OpenAPI tag."""
    cluster_view: bool = False
    """A ``TENANT`` read that may answer for a VM another node owns from the cluster's
    view (its node down: shown ``unknown``); never one that acts on the VM."""

    @property
    def read_only(self) -> bool:
        return not self.mutates

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
    if isinstance(result, Answer):
        return to_jsonable(result.body)
    if isinstance(result, RawJson):
        loaded: dict[str, Any] = json.loads(result.text)
        return loaded
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
            _check(op)
            if op.name in self._ops:
                raise ValueError(f"operation {op.name!r} is registered twice")
            self._ops[op.name] = op
        self._tools = [op for op in self._ops.values() if op.tool]

    def __iter__(self) -> Iterator[Operation]:
        return iter(self._ops.values())

    def __len__(self) -> int:
        return len(self._ops)

    def names(self) -> list[str]:
        return list(self._ops)

    def tools(self) -> list[Operation]:
        """The operations offered as agent tools, in the order they are listed."""
        return list(self._tools)

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

    def tool(self, name: str) -> Operation:
        """The agent tool called ``name`` (an operation no tool offers is unknown too).

        Raises:
            UnknownTool: no such tool.
        """
        op = self._ops.get(name)
        if op is None or not op.tool:
            known = [t.name for t in self._tools]
            raise UnknownTool(f"no tool named {name!r}", name=name[:100], known=known)
        return op


def _check(op: Operation) -> None:
    """A declaration's own consistency: name, path and query fields, access."""
    if not TOOL_NAME.match(op.name):
        raise ValueError(f"operation name {op.name!r} is not snake_case ≤ 64")
    fields = set(op.input.model_fields)
    if op.http is not None:
        named = {*op.http.path_params, *(q.target for q in (*op.http.query, *op.http.headers))}
        if op.http.raw_body:
            named.add("data")
        missing = named - fields
        if missing:
            raise ValueError(
                f"{op.name}: path parameters or query/header fields {missing} are not input fields"
            )
    if op.access is Access.TENANT and "vm_id" not in fields:
        raise ValueError(f"{op.name}: a tenant operation needs a vm_id input field")
