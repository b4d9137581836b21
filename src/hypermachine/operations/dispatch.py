"""The one way into an operation: validate, check access, run, audit, redact.

Every face — REST routes, ``/agentic/execute``, MCP, a script's ``vm.*`` host
calls — hands the dispatcher a caller, an operation name and raw arguments. It
validates them against the operation's input model, checks the operation's
:class:`~.declare.Access` (a ``TENANT`` operation finds its VM through the
caller's scope, so another tenant's VM is ``VM_NOT_FOUND`` whatever its state),
runs the handler as that caller, audits every mutating call and every denial,
and removes other tenants' VM ids from what it reports. Faces are handed only
this object: none of them reaches the store or the manager.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from pydantic import ValidationError

from ..cluster.etcd import EtcdError
from ..errors import (
    ClusterUnavailable,
    Forbidden,
    HMError,
    RateLimited,
    Unauthorized,
    ValidationFailed,
    VmNotFound,
)
from ..models import Vm
from ..security.caller import ANONYMOUS, Caller, acting_as
from .declare import Access, Answer, Context, Operation, Registry

__all__ = ["Dispatcher", "check_access", "redact"]

_VM_ID = re.compile(r"\bvm-[0-9a-f]{12}\b")
_DENIALS = (Unauthorized, Forbidden, VmNotFound)
_HIDDEN = "(another tenant's VM)"


def check_access(access: Access, caller: Caller) -> None:
    """The part of the access rule that needs no input (who, not which VM).

    Raises:
        Unauthorized: a key is needed and the caller has none.
        Forbidden: an admin operation and the caller is not an admin.
    """
    if access is Access.PUBLIC:
        return
    if caller is ANONYMOUS:
        raise Unauthorized("an API key is required (Authorization: Bearer hm_…)")
    if access is Access.ADMIN and not caller.admin:
        raise Forbidden("this needs an admin API key")


def redact(value: Any, visible: Callable[[str], bool]) -> Any:
    """``value`` with every VM id the caller may not see replaced (strings, dicts, lists)."""
    if isinstance(value, str):
        return _VM_ID.sub(lambda m: m.group(0) if visible(m.group(0)) else _HIDDEN, value)
    if isinstance(value, dict):
        return {k: redact(v, visible) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, visible) for v in value]
    return value


def _target(arguments: Mapping[str, Any]) -> str | None:
    """What the audit entry names: the VM (or the key) the call is about."""
    for key in ("vm_id", "key_id"):
        value = arguments.get(key)
        if isinstance(value, str):
            return value[:100]
    return None


class Dispatcher:
    """Runs operations of ``registry`` against ``services`` for any caller."""

    def __init__(self, registry: Registry, services: Any) -> None:
        self.registry = registry
        self.services = services
        self._manager = services.manager
        self._security = services.security

    async def call(
        self,
        name: str,
        caller: Caller,
        arguments: Mapping[str, Any],
        *,
        base_url: str = "http://localhost",
    ) -> object:
        """Run operation ``name`` as ``caller``; the handler's result.

        Raises:
            UnknownTool: no such operation.
            pydantic.ValidationError: the arguments do not fit the input model.
            HMError: the access check or the operation refused (VM ids redacted).
        """
        op = self.registry.get(name)
        target = _target(arguments)
        details: Mapping[str, Any] = {}
        with acting_as(caller):
            try:
                check_access(op.access, caller)
                args = op.input.model_validate(dict(arguments))
                details = op.audit_details(args) if op.audit_details else {}
                context = self._context(op, caller, args, base_url, await self._vm(op, args))
                result = await op.handler(context, args)
            except ValidationError:
                if op.mutates:
                    self._record(caller, op.name, target, ValidationFailed.code, {})
                raise
            except HMError as err:
                if op.mutates or isinstance(err, _DENIALS):
                    self._record(caller, op.name, target, err.code, details)
                self._redact(err, caller, named=target)
                raise
        if op.mutates:
            made = result.target if isinstance(result, Answer) else None
            self._record(caller, op.name, made or target, "ok", details)
        return result

    async def _vm(self, op: Operation, args: Any) -> Vm | None:
        """A ``TENANT`` operation's VM, found in the caller's scope: in this node's store,
        or for a ``cluster_view`` read in the cluster's view of the other nodes' VMs.

        Raises:
            VmNotFound: neither has it (or it is another tenant's).
            ClusterUnavailable: the cluster's view cannot be read.
        """
        if op.access is not Access.TENANT:
            return None
        try:
            local: Vm = self._manager.get(args.vm_id)
            return local
        except VmNotFound:
            views = self.services.views
            if not op.cluster_view or views is None:
                raise
        try:
            found: Vm | None = await views.find(args.vm_id)
        except EtcdError as err:
            raise ClusterUnavailable(f"the cluster's VMs cannot be read: {err}") from err
        if found is None:
            raise VmNotFound(f"no VM with id {args.vm_id!r}", id=args.vm_id)
        return found

    def _context(
        self, op: Operation, caller: Caller, args: Any, base_url: str, vm: Vm | None
    ) -> Context:
        """The handler's context, with a ``TENANT`` operation's VM (:meth:`_vm`)."""
        return Context(
            caller=caller,
            services=self.services,
            registry=self.registry,
            vm=vm,
            base_url=base_url,
            dispatch=self.bound(caller, base_url),
            audit=partial(self._record, caller),
            meter=partial(self._meter, caller),
        )

    def bound(
        self, caller: Caller, base_url: str = "http://localhost"
    ) -> Callable[[str, Mapping[str, Any]], Awaitable[object]]:
        """``dispatch(name, arguments)`` as ``caller`` (for faces running nested calls)."""

        async def dispatch(name: str, arguments: Mapping[str, Any]) -> object:
            return await self.call(name, caller, arguments, base_url=base_url)

        return dispatch

    async def _meter(self, caller: Caller) -> None:
        """One more request of ``caller``'s key (a script's host call): the key's limit
        holds inside scripts too.

        Raises:
            RateLimited: the key has used its requests for this minute.
        """
        if self._security is None:
            return
        decision = await self._security.rate_limit(caller)
        if decision is not None and not decision.allowed:
            raise RateLimited(
                f"more than {decision.limit} requests in a minute for this key",
                limit=decision.limit,
                retry_after_s=decision.retry_after_s,
            )

    def _record(
        self,
        caller: Caller,
        operation: str,
        target: str | None,
        outcome: str,
        details: Mapping[str, Any],
    ) -> None:
        if self._security is None:
            return
        with acting_as(caller):
            self._security.audit(operation, target, outcome, details)

    # -- redaction -----------------------------------------------------------------

    def _redact(self, err: HMError, caller: Caller, named: str | None) -> None:
        """Other tenants' VM ids out of an error (a non-admin sees "in use", not by whom);
        the id the caller named itself stays, so a missing VM and another tenant's read
        the same."""
        if caller.admin:
            return

        def visible(vm_id: str) -> bool:
            return vm_id == named or self._visible(caller, vm_id)

        err.message = redact(err.message, visible)
        err.details = redact(err.details, visible)
        err.args = (err.message,)

    def _visible(self, caller: Caller, vm_id: str) -> bool:
        owner = self._manager.owner_of(vm_id)
        return owner is not None and caller.sees(owner)
