"""The HTTP face: a Quart-Trio app whose routes are generated from the operations.

Each declared operation with a REST route gets one (:mod:`.rest`); the console
websocket and MCP have custom views, still dispatched through the same access
check. The app holds no global state: it is built around running services.

May import: ``agentic``, ``cluster``, ``config``, ``errors``, ``hypervisor``, ``models``,
``operations``, ``sandbox``, ``security``, ``ui`` (it assembles the app from them;
``cluster`` sends a request for a VM another node owns to that node).
"""

from __future__ import annotations

from quart_trio import QuartTrio

from ..agentic import agent_operations, mcp_views
from ..operations import Dispatcher, Registry
from ..operations.catalogue import vm_operations
from ..operations.cluster import cluster_operations
from ..operations.snapshots import snapshot_operations
from ..security.http import install_security
from ..security.operations import security_operations
from ..ui import ui_operations
from .console import console_views
from .errors import register_error_handlers
from .forward import install_forwarding
from .metrics import install_request_metrics
from .peer import install_peer_routes
from .rest import generic_view, mount
from .routing import LazyBuilderRule
from .services import Services
from .templates import create_view

__all__ = ["Services", "build_registry", "create_app"]


def build_registry() -> Registry:
    """Every operation the server offers, in the order agents see the tools."""
    return Registry(
        [
            *vm_operations(),
            *snapshot_operations(),
            *cluster_operations(),
            *security_operations(),
            *agent_operations(),
            *ui_operations(),
        ]
    )


def create_app(services: Services) -> QuartTrio:
    """Build the app around already-running services (the caller owns their lifetime)."""
    app = QuartTrio(__name__, static_folder=None)  # the UI serves its own files
    app.url_rule_class = LazyBuilderRule
    # JSON bodies are held to max_body_bytes by the REST face; file uploads may be larger.
    settings = services.settings
    app.config["MAX_CONTENT_LENGTH"] = max(settings.max_body_bytes, settings.file_max_bytes)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.extensions["hypermachine"] = services
    register_error_handlers(app)
    if services.security is not None:
        install_security(app, services.security)  # keys, tenants, rate limits
    if services.forwarder is not None:
        app.extensions["hypermachine.node_auth"] = services.forwarder.auth
        install_forwarding(app, services.forwarder)
        install_peer_routes(app)  # live migrations from other nodes
    install_request_metrics(app)
    dispatcher = Dispatcher(build_registry(), services)
    create = dispatcher.registry.get("create_vm")
    custom = {
        "create_vm": create_view(create, generic_view(create)),
        **console_views(),
        **mcp_views(dispatcher),
    }
    mount(app, dispatcher, custom)
    return app
