"""The web console: a single-page app served by the server itself at ``/ui``.

Every view has its own URL (``/ui/vms/{id}``, ``/ui/host`` …): the server answers
the app's page for all of them and the app routes in the browser. Its files are in
``static/``: the app's own (``index.html``, ``app.js``, ``app.css``) and the npm
packages it uses, vendored byte for byte under ``static/vendor/`` by
``tools/vendor-ui`` (CI checks they match). No request leaves the machine. The
pages are public; everything they show comes from the API with the key the person
signs in with (kept in the tab's ``sessionStorage``).

May import: ``errors``, ``operations``.
"""

from __future__ import annotations

from pathlib import Path

import trio

from ..errors import NotFound
from ..operations import Access, Answer, Context, Document, HttpRoute, Operation, QueryParam
from ..operations.inputs import NoInput, RootInput, UiAssetInput, UiViewInput

__all__ = ["STATIC", "ui_operations"]

STATIC = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'"
)


async def _page(_ctx: Context, _args: object) -> Document:
    data = await trio.to_thread.run_sync((STATIC / "index.html").read_bytes)
    return Document(data, _TYPES[".html"], headers={"Content-Security-Policy": _CSP})


async def _asset(_ctx: Context, args: UiAssetInput) -> Document:
    """A file under ``static/`` (never outside it; only known file types)."""
    path = (STATIC / args.asset).resolve()
    content_type = _TYPES.get(path.suffix)
    if content_type is None or not path.is_relative_to(STATIC.resolve()) or not path.is_file():
        raise NotFound(f"no web console file {args.asset!r}")
    data = await trio.to_thread.run_sync(path.read_bytes)
    return Document(data, content_type, max_age=3600 if args.asset.startswith("vendor/") else 0)


async def _root(_ctx: Context, args: RootInput) -> Answer:
    """Browsers go to the web console; programs get where things are."""
    links = {"ui": "/ui", "docs": "/docs", "openapi": "/openapi.json", "api": "/api/v1"}
    if "text/html" in args.accept:
        return Answer(links, status=302, headers={"Location": "/ui"})
    return Answer(links)


def _ui(name: str, title: str, route: HttpRoute, handler: object, input: object) -> Operation:
    return Operation(
        name=name,
        title=title,
        summary=title + ".",
        returns="The document.",
        input=input,  # type: ignore[arg-type]
        handler=handler,  # type: ignore[arg-type]
        access=Access.PUBLIC,
        tool=False,
        errors=(NotFound,),
        tag="ui",
        http=route,
    )


def ui_operations() -> list[Operation]:
    """The pages and files of the web console, and the root's redirect to it."""
    page = "The web console (a single-page app)"
    return [
        _ui("get_ui", page, HttpRoute("GET", "/ui", content="text/html"), _page, NoInput),
        _ui(
            "get_ui_view",
            page + ", at one of its views",
            HttpRoute("GET", "/ui/{view}", content="text/html", slashed=("view",)),
            _page,
            UiViewInput,
        ),
        _ui(
            "get_ui_asset",
            "A file of the web console",
            HttpRoute(
                "GET",
                "/ui/static/{asset}",
                content="application/octet-stream",
                slashed=("asset",),
            ),
            _asset,
            UiAssetInput,
        ),
        _ui(
            "get_root",
            "Where things are; browsers are sent to the web console",
            HttpRoute(
                "GET", "/", also=(302,), headers=(QueryParam("Accept", "accept", "Accept."),)
            ),
            _root,
            RootInput,
        ),
    ]
