"""Agent-facing faces of HyperMachine, all generated from the one operation registry
(:mod:`hypermachine.operations`).

From it come the provider tool formats (:mod:`.faces`, :mod:`.schemas`), the call
runner (:mod:`.execute`), the JSON-LD ontology, the OpenAPI document, the MCP
server (:mod:`.mcp`, over HTTP in :mod:`.mcp_http`, over stdio in
:mod:`.mcp_stdio`) and their operations (:mod:`.http`).

May import: ``operations``, ``models``, ``errors``, ``security.caller`` and
``security.web`` (the MCP endpoint's Origin check); never the hypervisor.
"""

from .http import agent_operations, mcp_views

__all__ = ["agent_operations", "mcp_views"]
