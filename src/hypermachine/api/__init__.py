"""The HTTP face: a Quart-Trio app with one blueprint per resource.

Handlers parse into pydantic models, call one manager operation and serialize the
result; they never touch QMP, processes or SQL.
"""

from __future__ import annotations

from quart_trio import QuartTrio

from ..agentic.http import register_agentic
from ..security.api import blueprint as security_blueprint
from ..security.http import install_security
from .errors import register_error_handlers
from .health import blueprint as health_blueprint
from .images import blueprint as images_blueprint
from .scripts import blueprint as scripts_blueprint
from .services import Services
from .vms import blueprint as vms_blueprint

__all__ = ["Services", "create_app"]


def create_app(services: Services) -> QuartTrio:
    """Build the app around already-running services (the caller owns their lifetime)."""
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = services.settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.extensions["hypermachine"] = services
    register_error_handlers(app)
    if services.security is not None:
        install_security(app, services.security)  # keys, tenants, rate limits, audit
        app.register_blueprint(security_blueprint)
    app.register_blueprint(health_blueprint)
    app.register_blueprint(vms_blueprint, url_prefix="/api/v1/vms")
    app.register_blueprint(images_blueprint, url_prefix="/api/v1/images")
    app.register_blueprint(scripts_blueprint)
    register_agentic(app)  # tools, execute, ontology, OpenAPI, docs, MCP (hypermachine.agentic)
    return app
