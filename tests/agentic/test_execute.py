"""``POST /agentic/execute`` with every provider's call shape, against a real tiny VM.

Calls are built with the providers' own SDK classes and dumped as an agent loop
would forward them; answers are checked against the SDKs' result types.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import ToolResultBlockParam, ToolUseBlock
from google.genai import types as gtypes
from openai.types.chat import ChatCompletionToolMessageParam
from openai.types.chat.chat_completion_message_function_tool_call import (
    ChatCompletionMessageFunctionToolCall,
    Function,
)
from pydantic import TypeAdapter

from guestconsole import console_text
from hostile import HOSTILE_BODIES
from hypermachine.api import Services

_counter = iter(range(1_000_000))


def openai_call(name: str, arguments: dict[str, Any] | str) -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    call = ChatCompletionMessageFunctionToolCall(
        id=f"call_{next(_counter)}", type="function", function=Function(name=name, arguments=text)
    )
    return call.model_dump(mode="json")


def anthropic_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    block = ToolUseBlock(id=f"toolu_{next(_counter)}", type="tool_use", name=name, input=arguments)
    return block.model_dump(mode="json", exclude_none=True)


def gemini_call(name: str, arguments: dict[str, Any], *, snake: bool = False) -> dict[str, Any]:
    part = gtypes.Part(
        function_call=gtypes.FunctionCall(id=f"fc_{next(_counter)}", name=name, args=arguments)
    )
    return part.model_dump(mode="json", by_alias=not snake, exclude_none=True)


async def execute(client: Any, call: dict[str, Any]) -> tuple[bool, Any]:
    """Post ``call``; check the answer has its provider's shape; return (ok, data)."""
    response = await client.post("/agentic/execute", json=call)
    assert response.status_code == 200, await response.get_data()
    answer = await response.get_json()
    if "function" in call:
        TypeAdapter(ChatCompletionToolMessageParam).validate_python(answer)
        assert set(answer) == {"role", "tool_call_id", "content"}
        assert answer["tool_call_id"] == call["id"]
        data = json.loads(answer["content"])
        return "error" not in data, data.get("error", data)
    if call.get("type") == "tool_use":
        TypeAdapter(ToolResultBlockParam).validate_python(answer)
        assert answer["tool_use_id"] == call["id"]
        data = json.loads(answer["content"][0]["text"])
        assert answer["is_error"] is ("error" in data)
        return not answer["is_error"], data.get("error", data)
    if "functionCall" in call or "function_call" in call:
        part = gtypes.Part.model_validate(answer)
        assert part.function_response is not None
        sent = call.get("functionCall") or call["function_call"]
        assert (part.function_response.name, part.function_response.id) == (
            sent["name"],
            sent["id"],
        )
        assert ("functionResponse" in answer) is ("functionCall" in call)
        result = part.function_response.response or {}
        return "output" in result, result.get("output", result.get("error"))
    assert answer["name"] == call["name"]
    return not answer["is_error"], answer.get("result", answer.get("error"))


def native(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


@pytest.mark.qemu
async def test_every_shape_drives_a_real_vm(client: Any, services: Services) -> None:
    # OpenAI strict mode sends every property: nulls for "unset", labels as pairs.
    strict_args = {
        "name": "agent-vm", "image": "tiny", "cpus": None, "memory_mb": 512, "disk_gb": 1,
        "network": None, "gpu": None, "security": None, "start": True, "wait": True,
        "labels": [{"key": "made-by", "value": "openai"}],
    }  # fmt: skip
    ok, vm = await execute(client, openai_call("create_vm", strict_args))
    assert ok, vm
    assert (vm["state"], vm["labels"], vm["cpus"]) == ("running", {"made-by": "openai"}, 1)
    vm_id = vm["id"]

    ok, got = await execute(client, anthropic_call("get_vm", {"vm_id": vm_id}))
    assert ok and got["state"] == "running"
    ok, paused = await execute(client, gemini_call("pause_vm", {"vm_id": vm_id}))
    assert ok and paused["state"] == "paused"
    assert services.manager.get(vm_id).state.value == "paused"
    ok, resumed = await execute(client, gemini_call("resume_vm", {"vm_id": vm_id}, snake=True))
    assert ok and resumed["state"] == "running"
    ok, metrics = await execute(client, openai_call("get_vm_metrics", {"vm_id": vm_id}))
    assert ok and metrics["vcpus"] == 1 and metrics["memory_rss_bytes"] > 0
    # Reset only once the guest is up: a reset in the first moments of its firmware can
    # wedge it for good (docs/architecture.md, "Reboot"; not handled yet).
    await services.manager.guest.agent(vm_id, 90)
    ok, rebooted = await execute(client, native("reboot_vm", {"vm_id": vm_id}))
    assert ok and rebooted["state"] == "running"
    ok, waited = await execute(
        client, gemini_call("wait_for_vm", {"vm_id": vm_id, "state": "running", "timeout_s": 5})
    )
    assert ok and waited["id"] == vm_id
    ok, listed = await execute(
        client, openai_call("list_vms", {"state": ["running"], "name": None, "labels": None,
                                         "limit": None, "cursor": None})
    )  # fmt: skip
    assert ok and [v["id"] for v in listed["vms"]] == [vm_id]

    # Failures reach the model as tool results it can read.
    ok, err = await execute(client, anthropic_call("resume_vm", {"vm_id": vm_id}))
    assert not ok and err["code"] == "INVALID_STATE" and err["details"]["current"] == "running"
    ok, err = await execute(client, openai_call("start_vm", '{"vm_id": '))
    assert not ok and err["code"] == "VALIDATION_ERROR"
    ok, err = await execute(client, gemini_call("format_disk", {}))
    assert not ok and err["code"] == "UNKNOWN_TOOL" and "create_vm" in err["details"]["known"]
    ok, ran = await execute(
        client, anthropic_call("run_vm_script", {"vm_id": vm_id, "code": "print(vm.state); 1 + 1"})
    )
    assert ok and (ran["result"], ran["output"]) == (2, ["running"]), ran
    ok, err = await execute(client, native("run_vm_script", {"vm_id": vm_id, "code": "1 +"}))
    assert not ok and err["code"] == "SCRIPT_SYNTAX_ERROR"

    # Inside the guest, through its agent (it may still be booting: wait for it).
    ok, ran = await execute(
        client, native("exec_in_vm", {"vm_id": vm_id, "command": ["/bin/echo", "hi"],
                                      "wait_agent_s": 90})
    )  # fmt: skip
    assert ok and (ran["exit_code"], ran["stdout"]) == (0, "hi\n"), (
        ran, services.manager.guest.info(vm_id), console_text(services, vm_id)[-3000:]
    )  # fmt: skip
    ok, wrote = await execute(
        client, gemini_call("write_vm_file", {"vm_id": vm_id, "path": "/tmp/t", "text": "x1"})
    )
    assert ok and wrote == {"path": "/tmp/t", "size": 2}, wrote
    ok, read = await execute(
        client,
        openai_call("read_vm_file", {"vm_id": vm_id, "path": "/tmp/t", "wait_agent_s": None}),
    )
    assert ok and read["text"] == "x1", read
    ok, err = await execute(client, native("read_vm_file", {"vm_id": vm_id, "path": "/nope"}))
    assert not ok and err["code"] == "GUEST_PATH_NOT_FOUND"

    ok, stopped = await execute(
        client, native("stop_vm", {"vm_id": vm_id, "force": True, "wait": True})
    )
    assert ok and stopped["state"] == "stopped" and stopped["pid"] is None
    ok, deleted = await execute(client, anthropic_call("delete_vm", {"vm_id": vm_id}))
    assert ok and deleted == {"deleted": True, "vm_id": vm_id}
    ok, err = await execute(client, native("get_vm", {"vm_id": vm_id}))
    assert not ok and err["code"] == "VM_NOT_FOUND"


async def test_list_images_through_each_shape(client: Any) -> None:
    for call in (
        native("list_images", {}),
        openai_call("list_images", "{}"),
        anthropic_call("list_images", {}),
        gemini_call("list_images", {}),
    ):
        ok, data = await execute(client, call)
        assert ok and "tiny" in [image["name"] for image in data["images"]]


SHAPES = {"native": native, "openai": openai_call, "anthropic": anthropic_call,
          "gemini": gemini_call}  # fmt: skip
OBJECT_ROWS = [row for row in HOSTILE_BODIES if isinstance(row[1], dict)]


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize(
    ("body", "code"), [(row[1], row[3]) for row in OBJECT_ROWS], ids=[row[0] for row in OBJECT_ROWS]
)
async def test_hostile_create_is_a_tool_error_and_changes_nothing(
    client: Any, services: Services, shape: str, body: dict[str, Any], code: str
) -> None:
    ok, err = await execute(client, SHAPES[shape]("create_vm", body))
    assert not ok and err["code"] == code, err
    assert services.manager.list()[0] == []
    vms_dir = services.settings.vms_dir
    assert not vms_dir.exists() or list(vms_dir.iterdir()) == []


@pytest.mark.parametrize(
    "envelope",
    [
        {"name": "create_vm", "arguments": ["x"]},
        {"name": "create_vm", "arguments": {}, "extra": 1},
        {"type": "tool_use", "name": "get_vm"},
        {"functionCall": {"args": {}}},
        {"function": {"arguments": "{}"}},
        {},
    ],
)
async def test_unreadable_envelopes_are_a_400(client: Any, envelope: dict[str, Any]) -> None:
    response = await client.post("/agentic/execute", json=envelope)
    body = await response.get_json()
    assert response.status_code == 400, body
    assert body["error"]["code"] == "VALIDATION_ERROR"


async def test_non_object_bodies_are_a_400(client: Any) -> None:
    for raw in (b"[]", b'"x"', b"{"):
        response = await client.post(
            "/agentic/execute", data=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400
        assert (await response.get_json())["error"]["code"] == "VALIDATION_ERROR"
