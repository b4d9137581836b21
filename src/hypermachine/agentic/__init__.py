"""Agent-facing faces of HyperMachine, all generated from one operation registry.

:mod:`.registry` defines an operation; :mod:`.operations` lists them. From that
list come the provider tool formats (:mod:`.faces`, :mod:`.schemas`), the call
runner (:mod:`.execute`), the JSON-LD ontology, the OpenAPI document, the MCP
server (:mod:`.mcp`, over HTTP in :mod:`.mcp_http`, over stdio in
:mod:`.mcp_stdio`) and the routes (:mod:`.http`).
"""

from .operations import build_registry
from .registry import HttpRoute, Operation, QueryParam, Registry

__all__ = ["HttpRoute", "Operation", "QueryParam", "Registry", "build_registry"]
