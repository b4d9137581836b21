"""The HTTP face: a Quart-Trio app with one blueprint per resource.

Handlers parse into pydantic models, call one manager operation and serialize the
result; they never touch QMP, processes or SQL.
"""

from __future__ import annotations

from quart_trio import QuartTrio

from ..agentic.http import register_agentic
from ..security.api import blueprint as security_blueprint
from ..security.http import install_security
from .console import blueprint as console_blueprint
from .devices import blueprint as devices_blueprint
from .errors import register_error_handlers
from .events import blueprint as events_blueprint
from .guest import blueprint as guest_blueprint
from .health import blueprint as health_blueprint
from .host import blueprint as host_blueprint
from .images import blueprint as images_blueprint
from .metrics import blueprint as metrics_blueprint
from .scripts import blueprint as scripts_blueprint
from .services import Services
from .snapshots import blueprint as snapshots_blueprint
from .vms import blueprint as vms_blueprint

__all__ = ["Services", "create_app"]


def create_app(services: Services) -> QuartTrio:
    """Build the app around already-running services (the caller owns their lifetime)."""
    app = QuartTrio(__name__)
    # JSON bodies are held to max_body_bytes by parse_body; file uploads may be larger.
    settings = services.settings
    app.config["MAX_CONTENT_LENGTH"] = max(settings.max_body_bytes, settings.file_max_bytes)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.extensions["hypermachine"] = services
    register_error_handlers(app)
    if services.security is not None:
        install_security(app, services.security)  # keys, tenants, rate limits, audit
        app.register_blueprint(security_blueprint)
    app.register_blueprint(health_blueprint)
    app.register_blueprint(metrics_blueprint)
    app.register_blueprint(vms_blueprint, url_prefix="/api/v1/vms")
    app.register_blueprint(images_blueprint, url_prefix="/api/v1/images")
    app.register_blueprint(host_blueprint, url_prefix="/api/v1/host")
    app.register_blueprint(scripts_blueprint)
    app.register_blueprint(guest_blueprint, url_prefix="/api/v1/vms")
    app.register_blueprint(snapshots_blueprint, url_prefix="/api/v1/vms")
    app.register_blueprint(console_blueprint, url_prefix="/api/v1/vms")
    app.register_blueprint(events_blueprint, url_prefix="/api/v1/events")
    register_agentic(app)  # tools, execute, ontology, OpenAPI, docs, MCP (hypermachine.agentic)
    app.register_blueprint(devices_blueprint, url_prefix="/api/v1/host/devices")
    return app
