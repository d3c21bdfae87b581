"""``/metrics``: the Prometheus text format, open unless ``api.metrics_token`` names a token."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request

from pxetwist.api.router import ApiError, write_json
from pxetwist.api.tokens import TokenSet


class MetricsResource(Resource):
    isLeaf = True

    def __init__(
        self,
        registry: CollectorRegistry,
        tokens: Callable[[], TokenSet],
        required: Callable[[], str | None],
        before_scrape: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self.registry = registry
        self._tokens = tokens
        self._required = required
        self.before_scrape = before_scrape

    def render_GET(self, request: Request) -> bytes:
        name = self._required()
        if name is not None:
            token = self._tokens().from_header(request.getHeader(b"authorization"))
            if token is None or token.name != name:
                error = ApiError(401, f"/metrics needs the {name!r} token", "Authorization")
                return write_json(
                    request,
                    401,
                    error.as_json(),
                    {"www-authenticate": 'Bearer realm="pxetwist-metrics"'},
                )
        self.before_scrape()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self.registry)
