"""Pure converters from an operation's pydantic input model to each provider's schema.

- :func:`json_schema`: the model's JSON Schema, ``$ref``s inlined and titles
  dropped (Anthropic ``input_schema`` and MCP ``inputSchema``).
- :func:`openai_strict`: OpenAI strict mode (every property required, optional
  ones nullable, ``additionalProperties: false`` on every object, only the
  supported keywords).
- :func:`gemini_schema`: Gemini's OpenAPI-3.0 subset (upper-case types,
  ``nullable``, no ``$ref``/``additionalProperties``/``const``/...).

Neither OpenAI strict mode nor Gemini can express a free-form map or an
any-typed value, so both get a *lowered* schema first: a map becomes a list of
``{key, value}`` pairs and an any-typed value a JSON-encoded string.
:func:`raise_arguments` turns such arguments back into what the input model
expects, guided by the original schema. Constraints a provider cannot express
are kept as words in the description; the input model still enforces them.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

__all__ = [
    "GEMINI_FORBIDDEN",
    "field_schemas",
    "gemini_schema",
    "json_schema",
    "lower",
    "openai_strict",
    "raise_arguments",
]

Schema = dict[str, Any]

_OPENAI_KEYS = {
    "type", "description", "properties", "required", "additionalProperties", "items", "enum",
    "const", "anyOf", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "multipleOf", "minItems", "maxItems",
}  # fmt: skip
_OPENAI_FORMATS = {
    "date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid",
}  # fmt: skip

GEMINI_FORBIDDEN = frozenset(
    {
        "additionalProperties", "$ref", "$defs", "definitions", "$schema", "oneOf", "allOf",
        "not", "const", "patternProperties", "exclusiveMinimum", "exclusiveMaximum",
        "multipleOf", "uniqueItems", "if", "then", "else", "title", "examples",
    }
)  # fmt: skip
_GEMINI_KEYS = {
    "type": "type", "format": "format", "description": "description", "nullable": "nullable",
    "enum": "enum", "items": "items", "properties": "properties", "required": "required",
    "minItems": "min_items", "maxItems": "max_items", "minProperties": "min_properties",
    "maxProperties": "max_properties", "minLength": "min_length", "maxLength": "max_length",
    "pattern": "pattern", "minimum": "minimum", "maximum": "maximum", "anyOf": "any_of",
}  # fmt: skip
_GEMINI_FORMATS = {"STRING": {"enum", "date-time"}, "INTEGER": {"int32", "int64"},
                   "NUMBER": {"float", "double"}}  # fmt: skip

# Constraint keywords a provider may not take, and how to say them in words.
_WORDS: dict[str, Callable[[Any], str]] = {
    "minLength": lambda v: f"at least {v} characters",
    "maxLength": lambda v: f"at most {v} characters",
    "pattern": lambda v: f"must match {v}",
    "minimum": lambda v: f"minimum {v}",
    "maximum": lambda v: f"maximum {v}",
    "exclusiveMinimum": lambda v: f"greater than {v}",
    "exclusiveMaximum": lambda v: f"less than {v}",
    "minItems": lambda v: f"at least {v} items",
    "maxItems": lambda v: f"at most {v} items",
    "minProperties": lambda v: f"at least {v} entries",
    "maxProperties": lambda v: f"at most {v} entries",
    "default": lambda v: f"default {json.dumps(v)}",
    "format": lambda v: f"format {v}",
}


# -- the plain JSON Schema ------------------------------------------------------


def json_schema(model: type[BaseModel]) -> Schema:
    """The model's JSON Schema, self-contained: ``$ref``s inlined, no ``$defs``, no titles."""
    raw = model.model_json_schema()
    defs = raw.pop("$defs", {})
    inlined: Schema = _inline(raw, defs, ())
    return inlined


@functools.cache
def field_schemas(model: type[BaseModel]) -> dict[str, Schema]:
    """Each field's JSON Schema (refs inlined): what a REST query or header parameter
    filling that field is, in the parser and in the OpenAPI document alike."""
    properties: dict[str, Schema] = json_schema(model).get("properties", {})
    return properties


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            raise ValueError(f"recursive model {name} cannot be inlined")
        merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs, (*seen, name))
    out: Schema = {}
    for key, value in node.items():
        if key == "title":
            continue
        if key in ("properties", "$defs", "patternProperties"):
            out[key] = {name: _inline(sub, defs, seen) for name, sub in value.items()}
        else:
            out[key] = _inline(value, defs, seen)
    return out


# -- lowering: maps and any-values into shapes every provider accepts ---------------


def _is_map(schema: Schema) -> bool:
    extra = schema.get("additionalProperties")
    return (
        schema.get("type") == "object"
        and not schema.get("properties")
        and (isinstance(extra, dict) or extra is True)
    )


def _map_values(schema: Schema) -> Schema:
    extra = schema["additionalProperties"]
    return extra if isinstance(extra, dict) else {}


def _is_any(schema: Schema) -> bool:
    return not ({"type", "anyOf", "enum", "const", "properties", "items"} & set(schema))


def lower(schema: Schema) -> Schema:
    """Maps become ``[{key, value}]`` lists, any-typed values JSON-encoded strings."""
    if _is_any(schema):
        text = "a JSON-encoded value"
        desc = schema.get("description")
        return {"type": "string", "description": f"{desc} ({text})" if desc else text}
    out = dict(schema)
    if _is_map(schema):
        pair = {
            "type": "object",
            "properties": {
                "key": {"type": "string"},
                "value": lower(_map_values(schema)),
            },
            "required": ["key", "value"],
            "additionalProperties": False,
        }
        out = {k: v for k, v in schema.items() if k not in ("additionalProperties", "type")}
        out.update(type="array", items=pair)
        if "maxProperties" in schema:
            out["maxItems"] = out.pop("maxProperties")
        note = "a list of {key, value} pairs"
        out["description"] = (
            f"{schema['description']} ({note})" if "description" in schema else note
        )
        return out
    if "properties" in schema:
        out["properties"] = {k: lower(v) for k, v in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        out["items"] = lower(schema["items"])
    if "anyOf" in schema:
        out["anyOf"] = [lower(branch) for branch in schema["anyOf"]]
    return out


def raise_arguments(schema: Schema, value: Any) -> Any:
    """Undo :func:`lower` on arguments a model produced from a lowered schema.

    Also drops ``null`` for optional properties whose schema does not allow null
    (strict mode makes every property required, so models send null for "unset").
    Anything that does not fit is passed through for the input model to reject.
    """
    branches = [b for b in schema.get("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return raise_arguments({**rest, **branches[0]}, value)
    if _is_any(schema) and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if _is_map(schema) and isinstance(value, list):
        return _pairs_to_dict(_map_values(schema), value)
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        required = set(schema.get("required", []))
        return {
            key: raise_arguments(props[key], item) if key in props else item
            for key, item in value.items()
            if not (item is None and key not in required and not _allows_null(props.get(key)))
        }
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [raise_arguments(schema["items"], item) for item in value]
    return value


def _pairs_to_dict(value_schema: Schema, pairs: list[Any]) -> Any:
    if not all(isinstance(p, dict) and set(p) == {"key", "value"} for p in pairs):
        return pairs
    return {p["key"]: raise_arguments(value_schema, p["value"]) for p in pairs}


def _allows_null(schema: Schema | None) -> bool:
    if schema is None:
        return True
    types = schema.get("type")
    if types == "null" or (isinstance(types, list) and "null" in types):
        return True
    return any(_allows_null(b) for b in schema.get("anyOf", [])) or _is_any(schema)


def _with_words(schema: Schema, dropped: dict[str, Any]) -> Schema:
    words = [
        _WORDS[k](v)
        for k, v in dropped.items()
        if k in _WORDS and not (k == "default" and v is None)
    ]
    if not words:
        return schema
    desc = schema.get("description", "")
    note = "; ".join(words)
    return {**schema, "description": f"{desc} ({note})" if desc else note.capitalize()}


# -- OpenAI strict mode -------------------------------------------------------------


def openai_strict(model: type[BaseModel]) -> Schema:
    """The input model as an OpenAI strict-mode ``parameters`` schema."""
    return _strict(lower(json_schema(model)))


def _strict(schema: Schema) -> Schema:
    keep = {k: v for k, v in schema.items() if k in _OPENAI_KEYS}
    dropped = {k: v for k, v in schema.items() if k not in _OPENAI_KEYS}
    if keep.get("format") not in _OPENAI_FORMATS and "format" in keep:
        dropped["format"] = keep.pop("format")
    if "anyOf" in keep:
        keep["anyOf"] = [_strict(b) for b in keep["anyOf"]]
    if isinstance(keep.get("items"), dict):
        keep["items"] = _strict(keep["items"])
    if keep.get("type") == "object":
        props = keep.get("properties", {})
        required = set(keep.get("required", []))
        keep["properties"] = {
            name: _strict(sub) if name in required else _nullable(_strict(sub))
            for name, sub in props.items()
        }
        keep["required"] = list(props)
        keep["additionalProperties"] = False
    return _with_words(keep, dropped)


def _nullable(schema: Schema) -> Schema:
    """``schema`` or null (how strict mode spells an optional property)."""
    if _allows_null(schema):
        return schema
    out = dict(schema)
    if "anyOf" in out:
        out["anyOf"] = [*out["anyOf"], {"type": "null"}]
        return out
    if out.get("type") in ("object", "array"):
        described = {k: out.pop(k) for k in ("description",) if k in out}
        return {"anyOf": [out, {"type": "null"}], **described}
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    if "const" in out:
        out["enum"] = [out.pop("const"), None]
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
    elif isinstance(kind, list):
        out["type"] = [*kind, "null"]
    return out


# -- Gemini -------------------------------------------------------------------------


def gemini_schema(model: type[BaseModel]) -> Schema | None:
    """The input model as a Gemini ``parameters`` Schema; None when it takes nothing."""
    schema = _gemini(lower(json_schema(model)))
    return schema if schema.get("properties") else None


def _gemini(schema: Schema) -> Schema:
    schema = copy.copy(schema)
    nullable = False
    if "anyOf" in schema:
        branches = [b for b in schema["anyOf"] if b.get("type") != "null"]
        nullable = len(branches) < len(schema["anyOf"])
        if len(branches) == 1:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            schema = {**branches[0], **rest}
        else:
            schema["anyOf"] = branches
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if isinstance(schema.get("type"), list):
        kinds = [t for t in schema["type"] if t != "null"]
        nullable = nullable or len(kinds) < len(schema["type"])
        schema["type"] = kinds[0]
    if "enum" in schema:
        nullable = nullable or None in schema["enum"]
        schema["enum"] = [str(v) for v in schema["enum"] if v is not None]
        schema.setdefault("type", "string")
    out: Schema = {}
    dropped: dict[str, Any] = {}
    for key, value in schema.items():
        target = _GEMINI_KEYS.get(key)
        if target is None:
            dropped[key] = value
        elif key == "properties":
            out[target] = {name: _gemini(sub) for name, sub in value.items()}
            out["property_ordering"] = list(value)
        elif key == "items":
            out[target] = _gemini(value)
        elif key == "anyOf":
            out[target] = [_gemini(b) for b in value]
        else:
            out[target] = value
    if isinstance(out.get("type"), str):
        out["type"] = out["type"].upper()
    if "format" in out and out["format"] not in _GEMINI_FORMATS.get(out.get("type", ""), set()):
        dropped["format"] = out.pop("format")
    if nullable:
        out["nullable"] = True
    return _with_words(out, dropped)
