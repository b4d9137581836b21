"""The app's URL rules: matched as Quart matches them, built into URLs only on demand.

Werkzeug compiles two URL builders (Python code, for ``url_for``) for every rule as it
is added: most of the time it takes to build the app, which the tests do for every
test. HyperMachine never builds a URL from a rule, so a builder is compiled the first
time it is used instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart.routing import QuartRule

__all__ = ["LazyBuilderRule"]


class LazyBuilderRule(QuartRule):
    def _compile_builder(self, append_unknown: bool = True) -> Callable[..., tuple[str, str]]:
        compiled: Callable[..., tuple[str, str]] | None = None

        def build(rule: LazyBuilderRule, *args: Any, **kwargs: Any) -> tuple[str, str]:
            nonlocal compiled
            if compiled is None:
                compiled = QuartRule._compile_builder(rule, append_unknown)
            return compiled(rule, *args, **kwargs)

        return build
