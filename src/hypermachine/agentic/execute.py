"""Running one tool call, whatever shape the agent framework delivers it in.

:func:`parse_call` recognises our own ``{name, arguments}`` and the providers'
own call shapes (an OpenAI ``tool_call``, an Anthropic ``tool_use`` block, a
Gemini ``functionCall`` part); :func:`run_call` runs it against the registry and
never raises for the tool's own failures; :func:`render` answers in the shape
that matches the call (``role: "tool"`` message, ``tool_result`` block,
``functionResponse`` part), so an agent loop can forward calls untouched and
hand the answers back to its model, errors included.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import HMError, ValidationFailed, validation_details, validation_failed
from ..operations.declare import Registry, to_jsonable
from . import schemas

__all__ = ["Outcome", "Shape", "ToolCall", "parse_call", "render", "run_call"]

log = logging.getLogger(__name__)


class Shape(enum.Enum):
    NATIVE = "hypermachine"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    GEMINI_SNAKE = "gemini_snake"  # the Python SDK's function_call / function_response


@dataclass(frozen=True)
class ToolCall:
    """A call in a neutral form; ``problem`` is set when its arguments were unreadable."""

    shape: Shape
    name: str
    arguments: Mapping[str, Any]
    call_id: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Outcome:
    """A tool's answer: the result object, or the ``{code, message, details}`` error."""

    ok: bool
    data: dict[str, Any]


# -- the accepted envelopes ---------------------------------------------------------


class _Native(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: dict[str, Any] | None = None


class _OpenAIFunction(BaseModel):
    name: str
    arguments: str | dict[str, Any] = "{}"


class _OpenAI(BaseModel):
    """``{"id", "type": "function", "function": {"name", "arguments": "<JSON>"}}``."""

    id: str | None = None
    function: _OpenAIFunction


class _Anthropic(BaseModel):
    """``{"type": "tool_use", "id", "name", "input"}``."""

    type: str
    id: str
    name: str
    input: dict[str, Any]


class _GeminiCall(BaseModel):
    name: str
    args: dict[str, Any] | None = None
    id: str | None = None


def parse_call(body: Mapping[str, Any]) -> ToolCall:
    """The call inside ``body``.

    Raises:
        ValidationFailed: ``body`` is none of the accepted shapes.
    """
    try:
        return _parse(body)
    except ValidationError as err:
        raise ValidationFailed(
            "expected a tool call: {name, arguments}, an OpenAI tool_call, an Anthropic "
            "tool_use block or a Gemini functionCall part",
            errors=validation_details(err),
        ) from err


def _parse(body: Mapping[str, Any]) -> ToolCall:
    if "function" in body:
        call = _OpenAI.model_validate(body)
        return _openai_call(call)
    if body.get("type") == "tool_use":
        block = _Anthropic.model_validate(body)
        return ToolCall(Shape.ANTHROPIC, block.name, block.input, block.id)
    for key, shape in (("functionCall", Shape.GEMINI), ("function_call", Shape.GEMINI_SNAKE)):
        if key in body:
            fc = _GeminiCall.model_validate(body[key])
            return ToolCall(shape, fc.name, fc.args or {}, fc.id)
    native = _Native.model_validate(body)
    return ToolCall(Shape.NATIVE, native.name, native.arguments or {})


def _openai_call(call: _OpenAI) -> ToolCall:
    raw = call.function.arguments
    if isinstance(raw, dict):
        return ToolCall(Shape.OPENAI, call.function.name, raw, call.id)
    try:
        arguments = json.loads(raw) if raw.strip() else {}
    except ValueError as err:
        problem = f"arguments are not valid JSON: {err}"
        return ToolCall(Shape.OPENAI, call.function.name, {}, call.id, problem)
    if not isinstance(arguments, dict):
        problem = "arguments must be a JSON object"
        return ToolCall(Shape.OPENAI, call.function.name, {}, call.id, problem)
    return ToolCall(Shape.OPENAI, call.function.name, arguments, call.id)


# -- running ------------------------------------------------------------------------


@functools.cache
def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    return schemas.json_schema(model)


Dispatch = Callable[[str, Mapping[str, Any]], Awaitable[object]]
"""Runs an operation as the caller of the tool call (the dispatcher, bound to it)."""


async def run_call(registry: Registry, dispatch: Dispatch, call: ToolCall) -> Outcome:
    """Run ``call``; every failure becomes an error outcome the model can read."""
    try:
        if call.problem is not None:
            raise ValidationFailed(call.problem, tool=call.name[:100])
        op = registry.tool(call.name)
        arguments: Any = call.arguments
        if call.shape in (Shape.OPENAI, Shape.GEMINI, Shape.GEMINI_SNAKE):
            arguments = schemas.raise_arguments(_schema_of(op.input), dict(arguments))
        if not isinstance(arguments, Mapping):
            raise ValidationFailed("arguments must be a JSON object", tool=op.name)
        return Outcome(True, to_jsonable(await dispatch(op.name, arguments)))
    except ValidationError as err:
        failure: HMError = validation_failed(err)
    except HMError as err:
        failure = err
    except Exception as err:  # a bug of ours must still reach the model as a tool error
        log.exception("tool %s failed unexpectedly", call.name, exc_info=err)
        failure = HMError("internal error; see the server log")
    return Outcome(False, failure.body()["error"])  # type: ignore[arg-type]


# -- answering ----------------------------------------------------------------------


def render(call: ToolCall, outcome: Outcome) -> dict[str, Any]:
    """The answer to ``call`` in the shape its provider expects back."""
    payload = outcome.data if outcome.ok else {"error": outcome.data}
    text = json.dumps(payload, separators=(",", ":"))
    if call.shape is Shape.OPENAI:
        return {"role": "tool", "tool_call_id": call.call_id or "", "content": text}
    if call.shape is Shape.ANTHROPIC:
        return {
            "type": "tool_result",
            "tool_use_id": call.call_id,
            "content": [{"type": "text", "text": text}],
            "is_error": not outcome.ok,
        }
    if call.shape in (Shape.GEMINI, Shape.GEMINI_SNAKE):
        response: dict[str, Any] = {"name": call.name}
        if call.call_id is not None:
            response["id"] = call.call_id
        response["response"] = {"output": outcome.data} if outcome.ok else payload
        key = "functionResponse" if call.shape is Shape.GEMINI else "function_response"
        return {key: response}
    result_key = "result" if outcome.ok else "error"
    return {"name": call.name, "is_error": not outcome.ok, result_key: outcome.data}
