"""``hypermachine key create | list | revoke``: the keys the server reads — this host's
(its database) or, with ``--etcd``, the cluster's."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from ..config import Settings
from .caller import SYSTEM, TIERS, acting_as
from .db import SecurityStore
from .keybook import KeyBook
from .models import CreateKeyRequest, KeyInfo

__all__ = ["BookFor", "add_key_commands"]

SettingsFor = Callable[[argparse.Namespace], Settings]
# The key book to use: this host's, or the cluster's when etcd URLs are given.
BookFor = Callable[[Settings, SecurityStore, list[str]], AbstractAsyncContextManager[KeyBook]]


def _audit(store: SecurityStore, settings: Settings, operation: str, key: KeyInfo) -> None:
    with acting_as(SYSTEM):
        store.record(SYSTEM, operation, key.id, "ok", node=settings.node_name)


async def _create(args: argparse.Namespace, settings: Settings, book_for: BookFor) -> int:
    request = CreateKeyRequest(name=args.name, tier=args.tier, admin=args.admin, tenant=args.tenant)
    store = SecurityStore(settings.database_file)
    try:
        async with _book(args, settings, store, book_for) as book:
            created = await book.create_key(
                name=request.name, tier=request.tier, admin=request.admin, tenant=request.tenant
            )
        _audit(store, settings, "create_key", created)
    finally:
        store.close()
    print(created.key)  # stdout: the key alone, so `KEY=$(hypermachine key create …)` works
    role = "admin, " if created.admin else ""
    print(
        f"created {created.id} ({role}tier {created.tier}, tenant {created.tenant}); "
        "store the key now: it cannot be shown again",
        file=sys.stderr,
    )
    return 0


async def _list(args: argparse.Namespace, settings: Settings, book_for: BookFor) -> int:
    store = SecurityStore(settings.database_file)
    try:
        async with _book(args, settings, store, book_for) as book:
            keys = await book.list_keys()
    finally:
        store.close()
    for key in keys:
        status = f"revoked {key.revoked_at:%Y-%m-%d}" if key.revoked_at else "active"
        admin = "admin" if key.admin else "-"
        print(f"{key.id:<16} {key.name:<20} {key.tenant:<20} {key.tier:<10} {admin:<5} "
              f"{key.prefix}…  {status}")  # fmt: skip
    return 0


async def _revoke(args: argparse.Namespace, settings: Settings, book_for: BookFor) -> int:
    store = SecurityStore(settings.database_file)
    try:
        async with _book(args, settings, store, book_for) as book:
            revoked = await book.revoke_key(args.id)
        _audit(store, settings, "revoke_key", revoked)
    finally:
        store.close()
    print(f"revoked {revoked.id} ({revoked.name})")
    return 0


def _book(
    args: argparse.Namespace, settings: Settings, store: SecurityStore, book_for: BookFor
) -> AbstractAsyncContextManager[KeyBook]:
    given = getattr(args, "etcd", None)
    urls = [u.strip() for u in given.split(",") if u.strip()] if given else settings.etcd_urls
    return book_for(settings, store, urls)


def add_key_commands(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    settings_for: SettingsFor,
    book_for: BookFor,
) -> None:
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
        parser.add_argument(
            "--etcd",
            default=argparse.SUPPRESS,
            help="the cluster's etcd: its keys, not this host's",
        )
        parser.set_defaults(run=lambda a, run=run: _run(run, a, settings_for(a), book_for))


def _run(
    command: Callable[[argparse.Namespace, Settings, BookFor], Awaitable[int]],
    args: argparse.Namespace,
    settings: Settings,
    book_for: BookFor,
) -> int:
    import trio  # a server package: not in a client-only install

    return trio.run(command, args, settings, book_for)
