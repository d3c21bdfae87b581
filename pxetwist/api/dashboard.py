"""The web dashboard: three static files from the package, no build step, nothing from outside.

The page holds no data: it asks ``/api/v1/`` with the token the operator typed (kept in the
tab's session storage), so serving the files needs no token.  A strict Content-Security-Policy
keeps the page to its own script and style.
"""

from __future__ import annotations

from importlib import resources

from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

_FILES = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"app.js": ("app.js", b"text/javascript; charset=utf-8"),
    b"app.css": ("app.css", b"text/css; charset=utf-8"),
}
_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class DashboardFile(Resource):
    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        file, self.content_type = _FILES[name]
        self.body = resources.files("pxetwist.api").joinpath("web", file).read_bytes()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"content-security-policy", _POLICY)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cache-control", b"no-cache")
        return self.body


class DashboardAssets(Resource):
    """``/ui/<name>``: the script and the style sheet."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path in _FILES and path:
            return DashboardFile(path)
        return notFound()


class ListenerRoot(Resource):
    """The listener's ``/``: anything not mounted is a plain 404 (no HTML from user input)."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


def mount(root: Resource) -> None:
    """Put the dashboard at ``/`` and its assets under ``/ui/``."""
    root.putChild(b"", DashboardFile(b""))
    root.putChild(b"ui", DashboardAssets())
