"""The JSON-LD ontology: HyperMachine's classes and operations on schema.org and Hydra.

Generated from the pydantic models and the operation registry (pure). The
``@context`` is inline, so a JSON-LD processor expands the document without
fetching anything. Each class lists its properties with their ranges (XSD
datatypes, other classes, or the ``VmState`` enumeration); each operation its
HTTP method, path, expected input class, result class, agent tool name and the
error statuses it may answer with.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel

from ..models import (
    DiskStats,
    ExecResult,
    FileContent,
    GpuSpec,
    HostCapabilities,
    HostDevices,
    ImageInfo,
    NetworkSpec,
    ScriptRequest,
    ScriptResponse,
    SecuritySpec,
    Vm,
    VmList,
    VmMetrics,
    VmState,
)
from ..operations.declare import Operation, Registry

__all__ = ["CLASS_NAMES", "build_ontology"]

HYDRA = "http://www.w3.org/ns/hydra/core#"

CLASS_NAMES: dict[type[BaseModel], tuple[str, str]] = {
    Vm: ("VirtualMachine", "schema:SoftwareApplication"),
    VmList: ("VirtualMachineCollection", "hydra:Collection"),
    NetworkSpec: ("NetworkAttachment", "schema:Intangible"),
    GpuSpec: ("GpuAttachment", "schema:Intangible"),
    SecuritySpec: ("SecurityFeatures", "schema:Intangible"),
    ImageInfo: ("Image", "schema:SoftwareSourceCode"),
    VmMetrics: ("Metrics", "schema:Dataset"),
    DiskStats: ("DiskStatistics", "schema:Dataset"),
    ScriptRequest: ("Script", "schema:SoftwareSourceCode"),
    ScriptResponse: ("ScriptResult", "schema:Dataset"),
    ExecResult: ("CommandExecution", "schema:Action"),
    FileContent: ("GuestFile", "schema:MediaObject"),
    HostDevices: ("HostDevices", "schema:Dataset"),
    HostCapabilities: ("HostCapabilities", "schema:Dataset"),
}
"""Public models → (class name, the schema.org or Hydra class it refines)."""

_XSD = {
    int: "xsd:integer",
    float: "xsd:double",
    bool: "xsd:boolean",
    str: "xsd:string",
    datetime: "xsd:dateTime",
}
_SCHEMA_ORG_PROPERTY = {
    "name": "schema:name",
    "description": "schema:description",
    "id": "schema:identifier",
    "created_at": "schema:dateCreated",
    "updated_at": "schema:dateModified",
    "url": "schema:url",
    "os": "schema:operatingSystem",
    "labels": "schema:keywords",
}


def _context(base: str) -> dict[str, Any]:
    def ref(iri: str) -> dict[str, str]:
        return {"@id": iri, "@type": "@id"}

    return {
        "hydra": HYDRA,
        "schema": "https://schema.org/",
        "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
        "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
        "xsd": "http://www.w3.org/2001/XMLSchema#",
        "hm": f"{base}/agentic/ontology#",
        "label": "rdfs:label",
        "comment": "rdfs:comment",
        "range": ref("rdfs:range"),
        "domain": ref("rdfs:domain"),
        "subClassOf": ref("rdfs:subClassOf"),
        "subPropertyOf": ref("rdfs:subPropertyOf"),
        "title": "hydra:title",
        "description": "hydra:description",
        "entrypoint": ref("hydra:entrypoint"),
        "supportedClass": ref("hydra:supportedClass"),
        "supportedProperty": "hydra:supportedProperty",
        "supportedOperation": "hydra:supportedOperation",
        "property": ref("hydra:property"),
        "required": "hydra:required",
        "readable": "hydra:readable",
        "writeable": "hydra:writeable",
        "method": "hydra:method",
        "expects": ref("hydra:expects"),
        "returns": ref("hydra:returns"),
        "possibleStatus": "hydra:possibleStatus",
        "statusCode": "hydra:statusCode",
        "member": ref("hydra:member"),
        "path": "hm:path",
        "toolName": "hm:toolName",
        "errorCode": "hm:errorCode",
        "readOnly": "hm:readOnly",
        "destructive": "hm:destructive",
        "values": {"@id": "schema:hasEnumerationMember", "@type": "@id", "@container": "@list"},
    }


def _unwrap(annotation: Any) -> Any:
    """``X | None``, ``list[X]`` and ``Annotated[X, ...]`` → ``X``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(rest[0]) if len(rest) == 1 else Any
    if origin is list:
        return _unwrap(typing.get_args(annotation)[0])
    return annotation


class _Builder:
    """Collects class nodes while walking models (a nested model becomes a class too)."""

    def __init__(self) -> None:
        self.classes: dict[str, dict[str, Any]] = {}

    def class_iri(self, model: type[BaseModel]) -> str:
        name, parent = CLASS_NAMES.get(model, (model.__name__, "schema:Intangible"))
        iri = f"hm:{name}"
        if iri not in self.classes:
            self.classes[iri] = {}  # reserve first: models may refer to each other
            self.classes[iri] = self._class_node(model, iri, name, parent)
        return iri

    def _class_node(
        self, model: type[BaseModel], iri: str, name: str, parent: str
    ) -> dict[str, Any]:
        doc = (model.__doc__ or "").strip().splitlines()
        return {
            "@id": iri,
            "@type": "hydra:Class",
            "subClassOf": parent,
            "title": name,
            "description": doc[0] if doc else name,
            "supportedProperty": [
                self._property(iri, field_name, info)
                for field_name, info in model.model_fields.items()
            ],
            "supportedOperation": [],
        }

    def _property(self, class_iri: str, field_name: str, info: Any) -> dict[str, Any]:
        node: dict[str, Any] = {
            "@id": f"{class_iri}/{field_name}",
            "@type": "rdf:Property",
            "label": field_name,
            "domain": class_iri,
            "range": self._range(info.annotation),
        }
        if info.description:
            node["comment"] = info.description
        if field_name in _SCHEMA_ORG_PROPERTY:
            node["subPropertyOf"] = _SCHEMA_ORG_PROPERTY[field_name]
        return {
            "@type": "hydra:SupportedProperty",
            "property": node,
            "required": info.is_required(),
            "readable": True,
            "writeable": True,
        }

    def _range(self, annotation: Any) -> str:
        inner = _unwrap(annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return self.class_iri(inner)
        if isinstance(inner, type) and issubclass(inner, Enum):
            return f"hm:{inner.__name__}"
        if isinstance(inner, type) and inner in _XSD:
            return _XSD[inner]
        if typing.get_origin(inner) is typing.Literal:
            return "xsd:string"
        return "rdf:JSON"


def _states() -> dict[str, Any]:
    return {
        "@id": "hm:VmState",
        "@type": ["hydra:Class", "schema:Enumeration"],
        "subClassOf": "schema:Enumeration",
        "title": "VmState",
        "description": "The life-cycle state of a virtual machine.",
        "values": [
            {"@id": f"hm:VmState/{s.value}", "@type": "hm:VmState", "label": s.value}
            for s in VmState
        ],
    }


def _operation(builder: _Builder, op: Operation) -> dict[str, Any]:
    return {
        "@id": f"hm:operation/{op.name}",
        "@type": ["hydra:Operation", "schema:Action"],
        "title": op.title,
        "description": op.summary,
        **({"method": op.http.method, "path": op.http.path} if op.http else {}),
        "toolName": op.name,
        "expects": builder.class_iri(op.input),
        "returns": builder.class_iri(op.result) if op.result else "rdf:JSON",
        "readOnly": op.read_only,
        "destructive": op.destructive,
        "possibleStatus": [
            {
                "@type": "hydra:Status",
                "statusCode": err.status,
                "errorCode": err.code,
                "description": (err.__doc__ or err.code).strip().splitlines()[0],
            }
            for err in op.all_errors
        ],
    }


def build_ontology(registry: Registry, base: str) -> dict[str, Any]:
    """The ontology document, with absolute IRIs under ``base`` (the server's URL)."""
    builder = _Builder()
    for model in CLASS_NAMES:
        builder.class_iri(model)
    for op in registry.tools():
        node = _operation(builder, op)
        owner = builder.classes[f"hm:{op.resource}"]
        owner["supportedOperation"].append(node)
    return {
        "@context": _context(base),
        "@id": f"{base}/agentic/ontology",
        "@type": "hydra:ApiDocumentation",
        "title": "HyperMachine",
        "description": "Virtual machines on bare-metal Linux hosts, driven over QMP.",
        "entrypoint": f"{base}/api/v1/vms",
        "supportedClass": [*builder.classes.values(), _states()],
    }
