"""Run one ``vm`` verb: a client from the flags, the handler, errors as a line and an exit code."""

from __future__ import annotations

import argparse
import importlib

import httpx
import pydantic

from ..client import Client
from ..errors import HMError
from .output import Output

__all__ = ["run"]

_API_ERROR, _USAGE = 1, 2


def run(args: argparse.Namespace) -> int:
    """``args.handler`` is ``"module.function"`` in this package, imported only when used."""
    module, _, function = args.handler.rpartition(".")
    handler = getattr(importlib.import_module(f"{__package__}.{module}"), function)
    out = Output(args.output, args.quiet)
    try:
        with Client(args.server, args.api_key) as hm:
            code: int = handler(args, hm, out)
            return code
    except HMError as err:
        out.error(err)
        return _API_ERROR
    except pydantic.ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in err.errors()
        )
        out.note(f"[bold red]error[/]: invalid input: {problems}")
        return _USAGE
    except httpx.TransportError as err:
        out.note(f"[bold red]error[/]: cannot reach {args.server or 'the server'}: {err}")
        return _API_ERROR
    except OSError as err:  # a local file in vm cp / vm script
        out.note(f"[bold red]error[/]: {err}")
        return _API_ERROR
