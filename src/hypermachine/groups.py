"""Exception groups as one exception: Trio nurseries and task groups wrap what their
tasks raise in a group, even a single error, which a caller's ``except`` would miss."""

from __future__ import annotations

__all__ = ["sole_exception"]


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception ``group`` holds, however deeply wrapped; the group itself
    when it holds several."""
    leaves = group.exceptions
    if len(leaves) == 1:
        leaf = leaves[0]
        return sole_exception(leaf) if isinstance(leaf, BaseExceptionGroup) else leaf
    return group
