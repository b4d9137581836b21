"""Every error the API reports, one class per code.

The class fixes the code and the HTTP status; the instance carries the message and
the details. One handler in ``api`` turns any :class:`HMError` into
``{"error": {"code", "message", "details"}}``.

    HMError (500 INTERNAL_ERROR)
    ├── BadRequest (400 BAD_REQUEST)
    │   ├── ValidationFailed (400 VALIDATION_ERROR)
    │   ├── ImageNotFound (400 IMAGE_NOT_FOUND)
    │   ├── UnsupportedLanguage (400 UNSUPPORTED_LANGUAGE)
    │   └── ScriptSyntaxError (400 SCRIPT_SYNTAX_ERROR)
    ├── Unauthorized (401 UNAUTHORIZED)
    ├── Forbidden (403 FORBIDDEN)
    │   └── QuotaExceeded (403 QUOTA_EXCEEDED)
    ├── NotFound (404 NOT_FOUND)
    │   ├── VmNotFound (404 VM_NOT_FOUND)
    │   ├── GuestPathNotFound (404 GUEST_PATH_NOT_FOUND)
    │   ├── ExecNotFound (404 EXEC_NOT_FOUND)
    │   ├── UnknownTool (404 UNKNOWN_TOOL)
    │   ├── SnapshotNotFound (404 SNAPSHOT_NOT_FOUND)
    │   ├── KeyNotFound (404 KEY_NOT_FOUND)
    │   └── NodeNotFound (404 NODE_NOT_FOUND)
    ├── MethodNotAllowed (405 METHOD_NOT_ALLOWED)
    ├── PayloadTooLarge (413 PAYLOAD_TOO_LARGE)
    │   └── GuestFileTooLarge (413 GUEST_FILE_TOO_LARGE)
    ├── UnsupportedMediaType (415 UNSUPPORTED_MEDIA_TYPE)
    ├── Conflict (409 CONFLICT)
    │   ├── NameTaken (409 NAME_TAKEN)
    │   ├── InvalidState (409 INVALID_STATE)
    │   ├── IdempotencyConflict (409 IDEMPOTENCY_CONFLICT)
    │   ├── WaitTimeout (409 WAIT_TIMEOUT)
    │   ├── NotConfidential (409 NOT_CONFIDENTIAL)
    │   ├── GuestAgentUnavailable (409 GUEST_AGENT_UNAVAILABLE)
    │   ├── ConsoleBusy (409 CONSOLE_BUSY)
    │   ├── PortInUse (409 PORT_IN_USE)
    │   ├── AddressInUse (409 ADDRESS_IN_USE)
    │   ├── DeviceInUse (409 DEVICE_IN_USE)
    │   ├── DeviceUnavailable (409 DEVICE_UNAVAILABLE)
    │   ├── SnapshotRefused (409 SNAPSHOT_REFUSED)
    │   ├── MigrationRefused (409 MIGRATION_REFUSED)
    │   ├── OwnedElsewhere (409 VM_OWNED_ELSEWHERE)
    │   └── InsufficientResources (409 INSUFFICIENT_RESOURCES)
    ├── Unsupported (409 CAPABILITY_UNAVAILABLE)
    ├── RateLimited (429 RATE_LIMITED)
    ├── ScriptRuntimeError (422 SCRIPT_RUNTIME_ERROR)
    ├── ScriptLimitExceeded (422 SCRIPT_LIMIT_EXCEEDED)
    ├── GuestOperationFailed (422 GUEST_OPERATION_FAILED)
    ├── ImagePullFailed (502 IMAGE_PULL_FAILED)
    ├── ClusterUnavailable (503 CLUSTER_UNAVAILABLE)
    └── HypervisorError (500 HYPERVISOR_ERROR)
        └── VmFilesDamaged (409 VM_FILES_DAMAGED)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "AddressInUse",
    "BadRequest",
    "ClusterUnavailable",
    "Conflict",
    "ConsoleBusy",
    "DeviceInUse",
    "DeviceUnavailable",
    "ExecNotFound",
    "Forbidden",
    "GuestAgentUnavailable",
    "GuestFileTooLarge",
    "GuestOperationFailed",
    "GuestPathNotFound",
    "HMError",
    "HypervisorError",
    "IdempotencyConflict",
    "ImageNotFound",
    "ImagePullFailed",
    "InsufficientResources",
    "InvalidState",
    "KeyNotFound",
    "MethodNotAllowed",
    "MigrationRefused",
    "NameTaken",
    "NodeNotFound",
    "NotConfidential",
    "NotFound",
    "OwnedElsewhere",
    "PayloadTooLarge",
    "PortInUse",
    "QuotaExceeded",
    "RateLimited",
    "ScriptLimitExceeded",
    "ScriptRuntimeError",
    "ScriptSyntaxError",
    "SnapshotNotFound",
    "SnapshotRefused",
    "Unauthorized",
    "UnknownTool",
    "Unsupported",
    "UnsupportedLanguage",
    "UnsupportedMediaType",
    "ValidationFailed",
    "VmFilesDamaged",
    "VmNotFound",
    "WaitTimeout",
    "all_error_classes",
    "validation_details",
    "validation_failed",
]


class HMError(Exception):
    """Base of every error the API reports; the class fixes code and HTTP status."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    status: ClassVar[int] = 500

    def __init__(self, message: str, /, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(HMError):
    code, status = "BAD_REQUEST", 400


class ValidationFailed(BadRequest):
    code, status = "VALIDATION_ERROR", 400


class ImageNotFound(BadRequest):
    code, status = "IMAGE_NOT_FOUND", 400


class UnsupportedLanguage(BadRequest):
    code, status = "UNSUPPORTED_LANGUAGE", 400


class ScriptSyntaxError(BadRequest):
    code, status = "SCRIPT_SYNTAX_ERROR", 400


class Unauthorized(HMError):
    """No API key, or one that is unknown or revoked (sent with ``WWW-Authenticate``)."""

    code, status = "UNAUTHORIZED", 401


class Forbidden(HMError):
    """A valid key that may not do this (e.g. a non-admin key on an admin route)."""

    code, status = "FORBIDDEN", 403


class QuotaExceeded(Forbidden):
    """The tenant already has as many live VMs as its tier allows; details: limit, current."""

    code, status = "QUOTA_EXCEEDED", 403


class NotFound(HMError):
    code, status = "NOT_FOUND", 404


class VmNotFound(NotFound):
    code, status = "VM_NOT_FOUND", 404


class GuestPathNotFound(NotFound):
    """The guest agent reports no such file or folder in the guest."""

    code, status = "GUEST_PATH_NOT_FOUND", 404


class ExecNotFound(NotFound):
    code, status = "EXEC_NOT_FOUND", 404


class UnknownTool(NotFound):
    """An agent named a tool the registry does not have."""

    code, status = "UNKNOWN_TOOL", 404


class SnapshotNotFound(NotFound):
    """The VM has no complete snapshot of that name."""

    code, status = "SNAPSHOT_NOT_FOUND", 404


class NodeNotFound(NotFound):
    """No node of that name (or this server is not in a cluster); details: node."""

    code, status = "NODE_NOT_FOUND", 404


class KeyNotFound(NotFound):
    code, status = "KEY_NOT_FOUND", 404


class MethodNotAllowed(HMError):
    code, status = "METHOD_NOT_ALLOWED", 405


class PayloadTooLarge(HMError):
    code, status = "PAYLOAD_TOO_LARGE", 413


class GuestFileTooLarge(PayloadTooLarge):
    code, status = "GUEST_FILE_TOO_LARGE", 413


class UnsupportedMediaType(HMError):
    code, status = "UNSUPPORTED_MEDIA_TYPE", 415


class Conflict(HMError):
    code, status = "CONFLICT", 409


class NameTaken(Conflict):
    code, status = "NAME_TAKEN", 409


class InvalidState(Conflict):
    code, status = "INVALID_STATE", 409


class IdempotencyConflict(Conflict):
    code, status = "IDEMPOTENCY_CONFLICT", 409


class NotConfidential(Conflict):
    """Attestation was asked of a VM that runs without memory encryption."""

    code, status = "NOT_CONFIDENTIAL", 409


class WaitTimeout(Conflict):
    code, status = "WAIT_TIMEOUT", 409


class GuestAgentUnavailable(Conflict):
    """No guest agent answers in this VM (not installed, not started yet, or stopped)."""

    code, status = "GUEST_AGENT_UNAVAILABLE", 409


class ConsoleBusy(Conflict):
    """Someone else holds the VM's interactive serial console."""

    code, status = "CONSOLE_BUSY", 409


class PortInUse(Conflict):
    """A forwarded host port is another VM's or already bound on the host."""

    code, status = "PORT_IN_USE", 409


class AddressInUse(Conflict):
    """Another VM has this MAC or static IP."""

    code, status = "ADDRESS_IN_USE", 409


class DeviceInUse(Conflict):
    """A PCI device (or one of its IOMMU group) is held by another running VM."""

    code, status = "DEVICE_IN_USE", 409


class DeviceUnavailable(Conflict):
    """No instance of the wanted mediated-device type is left; details list what exists."""

    code, status = "DEVICE_UNAVAILABLE", 409


class SnapshotRefused(Conflict):
    """The VM's memory state cannot be saved: QEMU's migration blockers (a VFIO device...)
    or memory encryption; details: reasons."""

    code, status = "SNAPSHOT_REFUSED", 409


class MigrationRefused(Conflict):
    """The VM cannot be live-migrated: QEMU's migration blockers (a VFIO device...), memory
    encryption, or what is not built yet; details: reasons."""

    code, status = "MIGRATION_REFUSED", 409


class OwnedElsewhere(Conflict):
    """Another node of the cluster owns the VM (etcd says so); details: node."""

    code, status = "VM_OWNED_ELSEWHERE", 409


class InsufficientResources(Conflict):
    """Starting the VM would exceed the host's memory or vCPU budget; details say what is free."""

    code, status = "INSUFFICIENT_RESOURCES", 409


class RateLimited(HMError):
    """Too many requests for this key's tier in the last minute (sent with ``Retry-After``)."""

    code, status = "RATE_LIMITED", 429

    @property
    def retry_after(self) -> float | None:
        """Seconds until a request will be accepted again (``details.retry_after_s``)."""
        value = self.details.get("retry_after_s")
        return float(value) if isinstance(value, int | float) else None


class Unsupported(HMError):
    """The request is well formed but this host cannot honour it."""

    code, status = "CAPABILITY_UNAVAILABLE", 409


class ScriptRuntimeError(HMError):
    code, status = "SCRIPT_RUNTIME_ERROR", 422


class ScriptLimitExceeded(HMError):
    code, status = "SCRIPT_LIMIT_EXCEEDED", 422


class GuestOperationFailed(HMError):
    """The guest agent refused or failed the operation (permission, missing program, ...)."""

    code, status = "GUEST_OPERATION_FAILED", 422


class ImagePullFailed(HMError):
    code, status = "IMAGE_PULL_FAILED", 502


class ClusterUnavailable(HMError):
    """etcd, where the cluster's shared state lives, could not be reached or refused."""

    code, status = "CLUSTER_UNAVAILABLE", 503


class HypervisorError(HMError):
    code, status = "HYPERVISOR_ERROR", 500


class VmFilesDamaged(HypervisorError):
    """A file in the VM's folder, which QEMU's user can write, is not what it should be
    (a planted symlink, a disk layer that is no qcow2 image, a snapshot's record that is
    not one): nothing is followed and the operation is refused; details: path."""

    code, status = "VM_FILES_DAMAGED", 409


def all_error_classes() -> list[type[HMError]]:
    """Every error class of this module, base first, for documentation and uniqueness
    tests (a client's classes for codes it does not know are not the server's)."""
    found: list[type[HMError]] = []
    pending: list[type[HMError]] = [HMError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(c for c in cls.__subclasses__() if c.__module__ == __name__)
    return found


def validation_details(err: ValidationError) -> list[dict[str, str]]:
    """Field paths and messages of a pydantic error, without echoing the input back."""
    return [
        {
            "field": ".".join(str(part) for part in e["loc"]) or "(body)",
            "message": e["msg"],
            "type": e["type"],
        }
        for e in err.errors(include_url=False, include_input=False)
    ]


def validation_failed(err: ValidationError) -> ValidationFailed:
    """A pydantic error as ours (the one translation every face uses), naming the
    first field in the message."""
    details = validation_details(err)
    first = details[0] if details else {"field": "(arguments)", "message": "invalid"}
    return ValidationFailed(f"{first['field']}: {first['message']}", errors=details)
