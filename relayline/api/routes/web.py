"""The web UI: the chat at ``/``, the admin console at ``/admin``, files under ``/static/``.

Everything is read from ``relayline/web`` inside the installed package, so the UI works from a
wheel as well as from a checkout. Each response carries a strict Content-Security-Policy: only
the relay's own scripts and styles run, no inline script, no plug-ins, no framing, and sockets
only back to the relay itself. Model output is rendered in these pages, so the policy is the
last line of defence should the sanitizer ever miss something.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

import relayline
from relayline.api.state import relay_state
from relayline.errors import NotFound

log = structlog.get_logger("relayline.web")

router = APIRouter(include_in_schema=False)

WEB_ROOT = Path(relayline.__file__).resolve().parent / "web"
STATIC_ROOT = WEB_ROOT / "static"
VENDOR_BUNDLE = STATIC_ROOT / "vendor" / "vendor.js"
PAGES = {"/": "index.html", "/admin": "admin.html", "/widget": "widget.html"}
# Only the widget is meant to sit in an iframe, on the sites RELAYLINE_ALLOWED_ORIGINS names.
FRAMEABLE = frozenset({"/widget"})
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]{1,253}(?::\d{1,5})?$")

# Only these types are served: a stray file of any other kind in the package stays private.
MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
# A Host header is echoed into the policy; anything but a plain host[:port] is left out.
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::\d{1,5})?$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_vendor_warned = False


def content_security_policy(host: str | None, frame_ancestors: str = "'none'") -> str:
    """The pages' policy; ``connect-src`` names the relay's own ws(s) origin explicitly
    because older browsers do not let ``'self'`` cover WebSocket URLs."""
    connect = "'self'"
    if host and _HOST.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            f"connect-src {connect}",
            "manifest-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            f"frame-ancestors {frame_ancestors}",
        )
    )


def embedders(origins: list[str]) -> str:
    """``frame-ancestors`` for the widget: the allowed origins that are plain origins."""
    listed = [origin for origin in origins if _ORIGIN.fullmatch(origin)]
    return " ".join(listed) if listed else "'none'"


def security_headers(request: Request, frameable: bool = False) -> dict[str, str]:
    ancestors = "'none'"
    if frameable:
        ancestors = embedders(relay_state(request).settings.allowed_origins)
    headers = {
        "Content-Security-Policy": content_security_policy(request.headers.get("host"), ancestors),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    }
    if not frameable:
        headers["X-Frame-Options"] = "DENY"
    return headers


def _warn_without_vendor() -> None:
    global _vendor_warned
    if not _vendor_warned and not VENDOR_BUNDLE.is_file():
        _vendor_warned = True
        log.warning(
            "web_vendor_missing",
            detail="run scripts/build_web.sh; the UI shows plain text without Markdown until then",
        )


async def _page(request: Request) -> Response:
    name = PAGES[request.url.path]
    try:
        body = (WEB_ROOT / name).read_bytes()
    except OSError:
        raise NotFound("the web UI is not installed") from None
    _warn_without_vendor()
    headers = security_headers(request, frameable=request.url.path in FRAMEABLE)
    headers["Cache-Control"] = "no-cache"
    return HTMLResponse(body, headers=headers)


for _path in PAGES:
    router.add_api_route(_path, _page, methods=["GET", "HEAD"], response_class=HTMLResponse)


class UiStaticFiles(StaticFiles):
    """The UI's assets under ``/static/``: Starlette's ``StaticFiles`` (it keeps lookups inside
    the directory and answers ``ETag``/``Last-Modified``/304 and HEAD) with the relay's rules on
    top — only the listed file types (a stray file of any other kind stays private), no dot
    files or odd segments, the pages' security headers, and ``no-cache`` so an upgraded relay
    is revalidated at once and never runs a mix of old and new modules. A refusal is the
    relay's 404 ``not_found``."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        parts = PurePosixPath(path).parts
        suffix = PurePosixPath(path).suffix
        if not parts or not all(_SEGMENT.fullmatch(p) for p in parts) or suffix not in MEDIA_TYPES:
            raise NotFound("no such file")
        response = await super().get_response(path, scope)
        response.headers.update(security_headers(Request(scope)))
        response.headers["Cache-Control"] = "no-cache"
        if response.status_code == 200:
            response.headers["Content-Type"] = MEDIA_TYPES[suffix]
        return response


def static_files() -> UiStaticFiles:
    """The ``/static`` app (mounted by the relay's app)."""
    return UiStaticFiles(directory=STATIC_ROOT, check_dir=False)
