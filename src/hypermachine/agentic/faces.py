"""Tool lists in each provider's format, generated from the registry (pure)."""

from __future__ import annotations

from typing import Any

from ..operations.declare import Operation, Registry
from . import schemas

__all__ = ["anthropic_tools", "gemini_tools", "mcp_tool", "mcp_tools", "openai_tools"]


def openai_tools(registry: Registry) -> dict[str, Any]:
    """Chat Completions function tools in strict mode: ``{"tools": [...]}``."""
    return {
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": op.name,
                    "description": op.description,
                    "parameters": schemas.openai_strict(op.input),
                    "strict": True,
                },
            }
            for op in registry.tools()
        ]
    }


def anthropic_tools(registry: Registry) -> dict[str, Any]:
    """Messages API tools: ``{"tools": [{name, description, input_schema}]}``."""
    return {
        "tools": [
            {
                "name": op.name,
                "description": op.description,
                "input_schema": schemas.json_schema(op.input),
            }
            for op in registry.tools()
        ]
    }


def _gemini_declaration(op: Operation) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": op.name, "description": op.description}
    parameters = schemas.gemini_schema(op.input)
    if parameters is not None:
        declaration["parameters"] = parameters
    return declaration


def gemini_tools(registry: Registry) -> dict[str, Any]:
    """Gemini tools: ``{"tools": [{"function_declarations": [...]}]}``."""
    return {
        "tools": [{"function_declarations": [_gemini_declaration(op) for op in registry.tools()]}]
    }


def mcp_tool(op: Operation) -> dict[str, Any]:
    """One MCP ``Tool``, with the behaviour hints MCP clients show their users."""
    return {
        "name": op.name,
        "title": op.title,
        "description": op.description,
        "inputSchema": schemas.json_schema(op.input),
        "annotations": {
            "title": op.title,
            "readOnlyHint": op.read_only,
            "destructiveHint": op.destructive,
            "idempotentHint": op.idempotent,
            "openWorldHint": False,
        },
    }


def mcp_tools(registry: Registry) -> dict[str, Any]:
    """MCP ``tools/list`` entries: ``{"tools": [...]}`` (also what ``hypermachine mcp`` reads)."""
    return {"tools": [mcp_tool(op) for op in registry.tools()]}
