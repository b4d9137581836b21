"""``hypermachine serve | image … | host | script … | mcp | key … | vm … | completion``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import argcomplete

from .config import ConfigError, Settings, load_settings
from .security.keycli import add_key_commands
from .vmcli import add_client_commands

__all__ = ["main"]

# Import names of the "server" extra's packages (pyproject.toml): missing in a client install.
_SERVER_PACKAGES = {"qemu", "trio", "hypercorn", "quart", "quart_trio", "wasmtime", "psutil",
                    "prometheus_client", "swagger_ui_bundle", "pycdlib"}  # fmt: skip


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    config_file = Path(args.config) if getattr(args, "config", None) else None
    overrides = {"data_dir": getattr(args, "data_dir", None), **extra}
    return load_settings(config_file=config_file, overrides=overrides)


@asynccontextmanager
async def _key_book(settings: Settings, store: Any, etcd_urls: list[str]) -> AsyncIterator[Any]:
    """The keys ``hypermachine key …`` manages: the cluster's with etcd, else the host's."""
    if etcd_urls:
        from .cluster import Etcd
        from .cluster.keys import ClusterKeys

        async with Etcd(etcd_urls, timeout_s=settings.etcd_timeout_s) as etcd:
            yield ClusterKeys(etcd)
    else:
        from .security.db import LocalKeys

        yield LocalKeys(store)


def _cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from .server import serve

    settings = _settings(
        args, host=args.host, port=args.port, accelerator=args.accelerator, auth=args.auth,
        node=args.node, etcd=args.etcd, advertise=args.advertise,
    )  # fmt: skip
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(f"HyperMachine serving on http://{settings.host}:{settings.port}", flush=True)
    trio.run(serve, settings)
    return 0


def _catalogue(args: argparse.Namespace) -> Any:
    from .images import Catalogue

    settings = _settings(args)
    return Catalogue(
        settings.catalogue_file, settings.builtin_images_dir, settings.images_store_dir
    )


def _cmd_image_list(args: argparse.Namespace) -> int:
    for image in _catalogue(args).list():
        info = image.to_dict()
        mark = "available" if info["available"] else "not on disk"
        print(f"{info['name']:<16} {info['boot']:<7} {mark:<12} {info['description']}")
    return 0


def _cmd_image_pull(args: argparse.Namespace) -> int:
    from .vmcli.progress import download_progress

    with download_progress(args.name) as progress:
        image = _catalogue(args).pull(args.name, progress)
    print(f"pulled {image.name}")
    return 0


def _cmd_image_import(args: argparse.Namespace) -> int:
    catalogue = _catalogue(args)
    if any(i.name == args.name and i.source == "remote" for i in catalogue.list()):
        image = catalogue.sideload(args.name, Path(args.path), verify=not args.no_verify)
        print(
            f"provided {image.name} from {args.path}"
            + (f" ({image.stand_in})" if image.stand_in else "")
        )
        return 0
    kernel_boot = args.kernel is not None
    image = catalogue.import_file(
        args.name,
        Path(args.path),
        boot="kernel" if kernel_boot else "disk",
        kernel=Path(args.kernel) if kernel_boot else None,
        initrd=Path(args.initrd) if args.initrd else None,
        append=args.append or "",
    )
    print(f"imported {image.name}")
    return 0


def _cmd_host(args: argparse.Namespace) -> int:
    from .hostcli import host_report

    print(host_report(_settings(args, accelerator=args.accelerator), as_json=args.json))
    return 0


def _cmd_script_run(args: argparse.Namespace) -> int:
    from .scriptcli import run_script_file

    try:
        script_args = json.loads(args.args)
    except json.JSONDecodeError as err:
        print(f"hypermachine: --args is not JSON: {err}", file=sys.stderr)
        return 2
    return run_script_file(Path(args.file), vm_id=args.vm, server=args.server, args=script_args)


def _cmd_mcp(args: argparse.Namespace) -> int:
    import trio

    from .agentic.mcp_stdio import serve_stdio

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)  # stdout is the protocol
    trio.run(serve_stdio, args.server, args.api_key)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hypermachine", description=__doc__)
    parser.add_argument("--config", help="TOML settings file (also HM_CONFIG)")
    parser.add_argument("--data-dir", help="state directory (also HM_DATA_DIR)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the API server")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--accelerator", choices=["auto", "kvm", "tcg"], default=None)
    serve.add_argument("--data-dir", dest="data_dir", default=argparse.SUPPRESS)
    serve.add_argument(
        "--auth",
        choices=["auto", "keys", "open"],
        default=None,
        help="auto: open only with no keys on loopback; open: the explicit opt-out",
    )
    serve.add_argument("--node", default=None, help="this host's name in the cluster")
    serve.add_argument("--etcd", default=None, help="etcd client URLs, comma-separated")
    serve.add_argument("--advertise", default=None, help="the URL other nodes reach us at")
    serve.set_defaults(run=_cmd_serve)
    add_key_commands(commands, _settings, _key_book)

    image = commands.add_parser("image", help="the image catalogue").add_subparsers(
        dest="image_command", required=True
    )
    image.add_parser("list", help="list catalogue images").set_defaults(run=_cmd_image_list)
    pull = image.add_parser("pull", help="download a catalogue image and verify it")
    pull.add_argument("name")
    pull.set_defaults(run=_cmd_image_pull)
    imp = image.add_parser("import", help="add a local qcow2/raw file to the catalogue")
    imp.add_argument("name")
    imp.add_argument("path")
    imp.add_argument("--kernel", help="boot this kernel directly instead of the disk")
    imp.add_argument("--initrd")
    imp.add_argument("--append", help="kernel command line (with --kernel)")
    imp.add_argument(
        "--no-verify",
        action="store_true",
        help="for a remote catalogue name: accept a file that does not match its checksum "
        "(it is then listed as a stand-in)",
    )
    imp.set_defaults(run=_cmd_image_import)

    host = commands.add_parser("host", help="what this host can run (firmware, vTPM, SEV, ...)")
    host.add_argument("--accelerator", choices=["auto", "kvm", "tcg"], default=None)
    host.add_argument("--json", action="store_true", help="the same document as GET /api/v1/host")
    host.set_defaults(run=_cmd_host)

    script = commands.add_parser("script", help="Rhai scripts").add_subparsers(
        dest="script_command", required=True
    )
    run = script.add_parser("run", help="run a Rhai script (locally, or on a server's VM)")
    run.add_argument("file")
    run.add_argument("--vm", help="bind the script to this VM (runs on the server)")
    run.add_argument("--server", default="http://127.0.0.1:8080")
    run.add_argument("--args", default="{}", help="JSON object the script sees as `args`")
    run.set_defaults(run=_cmd_script_run)

    mcp = commands.add_parser("mcp", help="MCP over stdio, forwarding to a running server")
    mcp.add_argument("--server", default="http://127.0.0.1:8080", help="the server's URL")
    mcp.add_argument("--api-key", default=None, help="sent as a bearer token")
    mcp.set_defaults(run=_cmd_mcp)
    add_client_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argcomplete.autocomplete(parser)  # answers the shell's TAB (see `hypermachine completion`)
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as err:
        print(f"hypermachine: configuration error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in _SERVER_PACKAGES:
            print(
                f"hypermachine: {err.name} is missing: this command needs the server, "
                "pip install 'hypermachine[server]'",
                file=sys.stderr,
            )
            return 2
        raise
    except Exception as err:  # the CLI's last word: one line, not a traceback
        from .errors import HMError

        if isinstance(err, HMError):
            print(f"hypermachine: {err.message}", file=sys.stderr)
            print(json.dumps(err.details), file=sys.stderr)
            return 1
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
