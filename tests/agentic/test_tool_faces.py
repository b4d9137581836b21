"""The generated tool lists, checked against the providers' own SDK types and rules.

No guest boots here: the lists are pure functions of the registry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, get_type_hints

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import ToolParam
from google.genai import types as gtypes
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionFunctionToolParam
from pydantic import TypeAdapter

from hypermachine.agentic.faces import anthropic_tools, gemini_tools, mcp_tools, openai_tools
from hypermachine.agentic.schemas import GEMINI_FORBIDDEN, json_schema, lower, raise_arguments
from hypermachine.api import build_registry
from hypermachine.models import CreateVmRequest
from hypermachine.operations.declare import TOOL_NAME, Operation, Registry
from hypermachine.operations.inputs import RunVmScriptInput

REGISTRY = build_registry()
EXPECTED = {
    "list_vms", "get_vm", "create_vm", "delete_vm", "start_vm", "stop_vm", "pause_vm",
    "resume_vm", "reboot_vm", "wait_for_vm", "get_vm_metrics", "list_images", "run_vm_script",
    "exec_in_vm", "read_vm_file", "write_vm_file", "list_host_devices",
    "get_host_capabilities", "get_vm_attestation", "list_vm_execs", "get_vm_exec",
    "get_vm_console_log",
    "take_snapshot", "list_snapshots", "get_snapshot", "delete_snapshot", "restore_snapshot",
    "fork_vm", "hibernate_vm", "create_vm_from_snapshot", "migrate_vm",
    "list_nodes",
}  # fmt: skip
TOOL_NAMES = [op.name for op in REGISTRY.tools()]
OPENAI_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


def subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """Every schema object nested in ``schema`` (properties, items, anyOf), itself first."""
    if not isinstance(schema, dict):
        return
    yield schema
    for sub in (schema.get("properties") or {}).values():
        yield from subschemas(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from subschemas(schema[key])
    for key in ("anyOf", "any_of"):
        for sub in schema.get(key, []):
            yield from subschemas(sub)


def assert_keys_declared(typed_dict: type, value: dict[str, Any]) -> None:
    """TypedDict validation ignores unknown keys; the providers do not."""
    assert set(value) <= set(get_type_hints(typed_dict)), (typed_dict.__name__, value.keys())


def test_registry_has_every_tool_once() -> None:
    assert set(TOOL_NAMES) == EXPECTED
    assert len(TOOL_NAMES) == len(EXPECTED)
    for op in REGISTRY.tools():
        assert TOOL_NAME.match(op.name)
        assert "Returns:" in op.description and "VALIDATION_ERROR" in op.description
        assert op.input.model_config.get("extra") == "forbid", op.name


def test_registry_refuses_duplicates_and_path_mismatch() -> None:
    op = REGISTRY.get("get_vm")
    with pytest.raises(ValueError, match="twice"):
        Registry([op, op])
    broken = Operation(**{**op.__dict__, "name": "other", "input": CreateVmRequest})
    with pytest.raises(ValueError, match="path parameters"):
        Registry([broken])


def test_openai_tools_fit_the_sdk_and_strict_rules() -> None:
    tools = openai_tools(REGISTRY)["tools"]
    assert [t["function"]["name"] for t in tools] == TOOL_NAMES
    adapter = TypeAdapter(ChatCompletionFunctionToolParam)
    for tool in tools:
        adapter.validate_python(tool)
        assert_keys_declared(ChatCompletionFunctionToolParam, tool)
        function = tool["function"]
        assert function["strict"] is True
        assert re.match(OPENAI_NAME, function["name"])
        params = function["parameters"]
        assert params["type"] == "object"
        for sub in subschemas(params):
            assert not {"allOf", "not", "if", "then", "else", "oneOf", "$ref", "$defs"} & set(sub)
            assert not {"patternProperties", "dependentRequired", "dependentSchemas"} & set(sub)
            assert not {"default", "title", "minLength", "maxLength"} & set(sub), sub
            types = sub.get("type")
            if types == "object" or (isinstance(types, list) and "object" in types):
                assert sub["additionalProperties"] is False, (function["name"], sub)
                assert sorted(sub["required"]) == sorted(sub["properties"]), function["name"]


def test_openai_optional_properties_are_nullable() -> None:
    tools = {t["function"]["name"]: t["function"] for t in openai_tools(REGISTRY)["tools"]}
    props = tools["create_vm"]["parameters"]["properties"]
    assert props["name"]["type"] == "string"  # required: not nullable
    assert props["cpus"]["type"] == ["integer", "null"]
    assert {"type": "null"} in props["network"]["anyOf"]
    assert "Default 1" in props["cpus"]["description"]
    labels = props["labels"]["anyOf"][0]
    assert labels["type"] == "array"  # a free-form map becomes {key, value} pairs
    assert labels["items"]["required"] == ["key", "value"]


def test_anthropic_tools_fit_the_sdk() -> None:
    tools = anthropic_tools(REGISTRY)["tools"]
    adapter = TypeAdapter(ToolParam)
    for tool in tools:
        adapter.validate_python(tool)
        assert_keys_declared(ToolParam, tool)
        assert tool["input_schema"]["type"] == "object"
        assert "$ref" not in json.dumps(tool["input_schema"])


def test_gemini_tools_fit_the_sdk_and_the_subset() -> None:
    body = gemini_tools(REGISTRY)
    assert len(body["tools"]) == 1
    tool = gtypes.Tool.model_validate(body["tools"][0])  # the SDK forbids unknown fields
    declared = tool.function_declarations or []
    assert [d.name for d in declared] == TOOL_NAMES
    gtypes.GenerateContentConfig(tools=[tool])
    for declaration in body["tools"][0]["function_declarations"]:
        for sub in subschemas(declaration.get("parameters")):
            assert not GEMINI_FORBIDDEN & set(sub), (declaration["name"], sub)
            assert sub["type"] in {"STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"}
            if sub["type"] == "OBJECT":
                assert sub["properties"], (declaration["name"], sub)
            if "enum" in sub:
                assert all(isinstance(v, str) for v in sub["enum"])
    no_args = next(d for d in declared if d.name == "list_images")
    assert no_args.parameters is None


def test_mcp_tools_fit_the_sdk() -> None:
    from mcp_types import Tool

    for raw in mcp_tools(REGISTRY)["tools"]:
        tool = Tool.model_validate(raw)
        assert tool.input_schema["type"] == "object"
    hints = {t["name"]: t["annotations"] for t in mcp_tools(REGISTRY)["tools"]}
    assert hints["delete_vm"]["destructiveHint"] is True
    assert hints["get_vm"]["readOnlyHint"] is True


def _capture(response: dict[str, Any]) -> tuple[list[dict[str, Any]], httpx2.Client]:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        return httpx2.Response(200, json=response)

    return seen, httpx2.Client(transport=httpx2.MockTransport(handler))


def test_openai_sdk_sends_the_tools_as_written() -> None:
    """The README's snippet: the fetched list goes straight into the client call."""
    canned = {
        "id": "c", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "ok"}}],
    }  # fmt: skip
    seen, http = _capture(canned)
    client = openai.OpenAI(api_key="k", base_url="http://provider.invalid/v1", http_client=http)
    tools = openai_tools(REGISTRY)["tools"]
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                   tools=tools)  # fmt: skip
    assert seen[0]["tools"] == tools


def test_anthropic_sdk_sends_the_tools_as_written() -> None:
    canned = {
        "id": "m", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }  # fmt: skip
    seen, http = _capture(canned)
    client = anthropic.Anthropic(api_key="k", base_url="http://provider.invalid", http_client=http)
    tools = anthropic_tools(REGISTRY)["tools"]
    client.messages.create(model="m", max_tokens=10, tools=tools,
                           messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert seen[0]["tools"] == tools


labels = st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=5)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@given(labels=labels)
def test_lowered_maps_raise_back(labels: dict[str, str]) -> None:
    schema = json_schema(CreateVmRequest)
    pairs = [{"key": k, "value": v} for k, v in labels.items()]
    raised = raise_arguments(schema, {"name": "a", "image": "tiny", "labels": pairs, "cpus": None})
    assert raised == {"name": "a", "image": "tiny", "labels": labels}
    assert lower(schema)["properties"]["labels"]["type"] == "array"


@given(args=st.dictionaries(st.text(min_size=1, max_size=5), json_values, max_size=4))
def test_any_values_travel_as_json_strings(args: dict[str, Any]) -> None:
    schema = json_schema(RunVmScriptInput)
    pairs = [{"key": k, "value": json.dumps(v)} for k, v in args.items()]
    raised = raise_arguments(schema, {"vm_id": "vm-1", "code": "1", "args": pairs})
    assert raised["args"] == args
    RunVmScriptInput.model_validate(raised)
