"""``hypermachine key create | list | revoke``: the same store the server reads."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..config import Settings
from .caller import SYSTEM, TIERS, acting_as
from .db import SecurityStore
from .models import CreateKeyRequest
from .service import Security

__all__ = ["add_key_commands"]

SettingsFor = Callable[[argparse.Namespace], Settings]


def _open(settings: Settings) -> Security:
    return Security(settings, SecurityStore(settings.database_file))


def _create(args: argparse.Namespace, settings: Settings) -> int:
    request = CreateKeyRequest(name=args.name, tier=args.tier, admin=args.admin, tenant=args.tenant)
    guard = _open(settings)
    try:
        created = guard.store.create_key(
            name=request.name, tier=request.tier, admin=request.admin, tenant=request.tenant
        )
        with acting_as(SYSTEM):
            guard.audit("create_key", created.id, "ok")
    finally:
        guard.store.close()
    print(created.key)  # stdout: the key alone, so `KEY=$(hypermachine key create …)` works
    role = "admin, " if created.admin else ""
    print(
        f"created {created.id} ({role}tier {created.tier}, tenant {created.tenant}); "
        "store the key now: it cannot be shown again",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    store = SecurityStore(settings.database_file)
    try:
        keys = store.list_keys()
    finally:
        store.close()
    for key in keys:
        status = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        admin = "admin" if key.admin else "-"
        print(f"{key.id:<16} {key.name:<20} {key.tenant:<20} {key.tier:<10} {admin:<5} "
              f"{key.prefix}…  {status}")  # fmt: skip
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    guard = _open(settings)
    try:
        revoked = guard.store.revoke_key(args.id)
        with acting_as(SYSTEM):
            guard.audit("revoke_key", revoked.id, "ok")
    finally:
        guard.store.close()
    print(f"revoked {revoked.id} ({revoked.name})")
    return 0


def add_key_commands(commands: argparse._SubParsersAction, settings_for: SettingsFor) -> None:  # type: ignore[type-arg]
    """Mount ``key …`` on the CLI's subcommands."""
    key = commands.add_parser("key", help="API keys").add_subparsers(
        dest="key_command", required=True
    )
    create = key.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--tier", choices=TIERS, default="free")
    create.add_argument("--admin", action="store_true", help="sees every tenant, manages keys")
    create.add_argument("--tenant", default=None, help="tenant of its VMs (default: --name)")
    listing = key.add_parser("list", help="list keys (never the keys themselves)")
    revoke = key.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    for parser, run in ((create, _create), (listing, _list), (revoke, _revoke)):
        parser.add_argument("--data-dir", dest="data_dir", default=argparse.SUPPRESS)
        parser.set_defaults(run=lambda a, run=run: run(a, settings_for(a)))
