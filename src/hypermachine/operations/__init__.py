"""The one operation layer: every operation the server offers, declared once.

:mod:`.declare` says what an operation is (input and result models, access,
whether it mutates, its REST route, whether agents get it as a tool),
:mod:`.inputs` holds the input models, :mod:`.catalogue` the VM, guest, host and
server operations, and :mod:`.dispatch` the only way to run one: validate,
check access in the caller's scope, run, audit, redact. REST (``api``), the
agent faces (``agentic``), MCP and scripts (``sandbox``) all dispatch through it.

May import: ``models``, ``errors``, ``store`` (query types), ``telemetry``,
``security.caller``, ``security.tokens`` and ``hypervisor.qemu.qmp_commands`` (the
raw QMP operation's allowlist: QMP's command names live only there),
``cluster.etcd`` (its errors) and ``cluster.nodes`` (a single host's description of
itself for the node list); handlers
reach the hypervisor only through the services of their context.
"""

from .declare import (
    TOOL_NAME,
    Access,
    Answer,
    ByteStream,
    Context,
    Document,
    EventStream,
    HttpRoute,
    Operation,
    QueryParam,
    RawJson,
    Registry,
    to_jsonable,
)
from .dispatch import Dispatcher

__all__ = [
    "TOOL_NAME",
    "Access",
    "Answer",
    "ByteStream",
    "Context",
    "Dispatcher",
    "Document",
    "EventStream",
    "HttpRoute",
    "Operation",
    "QueryParam",
    "RawJson",
    "Registry",
    "to_jsonable",
]
