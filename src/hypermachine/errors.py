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
    │   ├── UnknownTool (404 UNKNOWN_TOOL)
    │   └── KeyNotFound (404 KEY_NOT_FOUND)
    ├── MethodNotAllowed (405 METHOD_NOT_ALLOWED)
    ├── PayloadTooLarge (413 PAYLOAD_TOO_LARGE)
    ├── UnsupportedMediaType (415 UNSUPPORTED_MEDIA_TYPE)
    ├── Conflict (409 CONFLICT)
    │   ├── NameTaken (409 NAME_TAKEN)
    │   ├── InvalidState (409 INVALID_STATE)
    │   ├── IdempotencyConflict (409 IDEMPOTENCY_CONFLICT)
    │   ├── WaitTimeout (409 WAIT_TIMEOUT)
    │   └── InsufficientResources (409 INSUFFICIENT_RESOURCES)
    ├── Unsupported (409 CAPABILITY_UNAVAILABLE)
    ├── RateLimited (429 RATE_LIMITED)
    ├── ScriptRuntimeError (422 SCRIPT_RUNTIME_ERROR)
    ├── ScriptLimitExceeded (422 SCRIPT_LIMIT_EXCEEDED)
    ├── FeatureUnavailable (501 FEATURE_UNAVAILABLE)
    ├── ImagePullFailed (502 IMAGE_PULL_FAILED)
    └── HypervisorError (500 HYPERVISOR_ERROR)
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadRequest",
    "Conflict",
    "FeatureUnavailable",
    "Forbidden",
    "HMError",
    "HypervisorError",
    "IdempotencyConflict",
    "ImageNotFound",
    "ImagePullFailed",
    "InsufficientResources",
    "InvalidState",
    "KeyNotFound",
    "MethodNotAllowed",
    "NameTaken",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimited",
    "ScriptLimitExceeded",
    "ScriptRuntimeError",
    "ScriptSyntaxError",
    "Unauthorized",
    "UnknownTool",
    "Unsupported",
    "UnsupportedLanguage",
    "UnsupportedMediaType",
    "ValidationFailed",
    "VmNotFound",
    "WaitTimeout",
    "all_error_classes",
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


class UnknownTool(NotFound):
    """An agent named a tool the registry does not have."""

    code, status = "UNKNOWN_TOOL", 404


class KeyNotFound(NotFound):
    code, status = "KEY_NOT_FOUND", 404


class MethodNotAllowed(HMError):
    code, status = "METHOD_NOT_ALLOWED", 405


class PayloadTooLarge(HMError):
    code, status = "PAYLOAD_TOO_LARGE", 413


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


class WaitTimeout(Conflict):
    code, status = "WAIT_TIMEOUT", 409


class InsufficientResources(Conflict):
    """Starting the VM would exceed the host's memory or vCPU budget; details say what is free."""

    code, status = "INSUFFICIENT_RESOURCES", 409


class RateLimited(HMError):
    """Too many requests for this key's tier in the last minute (sent with ``Retry-After``)."""

    code, status = "RATE_LIMITED", 429


class Unsupported(HMError):
    """The request is well formed but this host cannot honour it."""

    code, status = "CAPABILITY_UNAVAILABLE", 409


class ScriptRuntimeError(HMError):
    code, status = "SCRIPT_RUNTIME_ERROR", 422


class ScriptLimitExceeded(HMError):
    code, status = "SCRIPT_LIMIT_EXCEEDED", 422


class FeatureUnavailable(HMError):
    """The operation exists but this server has no service wired to perform it."""

    code, status = "FEATURE_UNAVAILABLE", 501


class ImagePullFailed(HMError):
    code, status = "IMAGE_PULL_FAILED", 502


class HypervisorError(HMError):
    code, status = "HYPERVISOR_ERROR", 500


def all_error_classes() -> list[type[HMError]]:
    """Every error class, base first, for documentation and uniqueness tests."""
    found: list[type[HMError]] = []
    pending: list[type[HMError]] = [HMError]
    while pending:
        cls = pending.pop(0)
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
