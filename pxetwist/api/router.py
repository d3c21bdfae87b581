"""A small JSON router on :mod:`twisted.web`: a route table, bearer auth, JSON in and out.

The table is data (:class:`Route`), so the OpenAPI description can be checked against it by a
test, and every answer, errors included, is JSON: ``{"status", "message", "field"}`` for an
error, with ``field`` naming the parameter or body key at fault (``null`` when none is).

Order of checks, so that nothing leaks to a caller without a token: no or unknown token -> 401
(before the route is even looked up), unknown path -> 404, wrong method -> 405, a read token on
a route that changes something -> 403.  Handlers run only after all of them pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pxetwist.api.tokens import Access, Token, TokenSet

log = Logger()

#: The largest request body read (a machine definition is a few hundred bytes).
MAX_BODY = 256 * 1024


class ApiError(Exception):
    """An answer other than success: HTTP status, a sentence, and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def as_json(self) -> dict[str, object]:
        return {"status": self.status, "message": self.message, "field": self.field}


@attrs.frozen
class Reply:
    status: int = 200
    body: object = None  # anything json.dumps takes; nothing is sent for 204
    headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class ApiRequest:
    """What a handler sees: path parameters, query, the caller's token and the JSON body."""

    web: Request
    params: Mapping[str, str]
    query: Mapping[str, str]
    token: Token

    def json_body(self) -> Any:
        """The body as JSON, or a 400 naming ``body`` (400, not 415: curl forgets the type)."""
        content = self.web.content
        raw = content.read(MAX_BODY + 1) if content is not None else b""
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"the body is larger than {MAX_BODY} bytes", "body")
        if not raw.strip():
            raise ApiError(400, "a JSON body is required", "body")
        try:
            return json.loads(raw)
        except UnicodeDecodeError:
            raise ApiError(400, "the body is not UTF-8 text", "body") from None
        except ValueError as error:
            raise ApiError(400, f"the body is not valid JSON: {error}", "body") from None

    def json_object(self) -> dict[str, Any]:
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, f"the body must be a JSON object, not {_json_kind(body)}", "body")
        return body


def _json_kind(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


Handler = Callable[[ApiRequest], Reply | Deferred[Reply]]


@attrs.frozen
class Route:
    method: str
    template: str  # "/api/v1/machines/{mac}"
    handler: Handler = attrs.field(eq=False)
    access: Access = Access.READ
    summary: str = ""
    pattern: re.Pattern[str] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.template))
        object.__setattr__(self, "pattern", re.compile(regex + r"/?\Z"))


def _query(request: Request) -> dict[str, str]:
    args = request.args or {}
    return {
        key.decode("utf-8", "replace"): values[-1].decode("utf-8", "replace")
        for key, values in args.items()
        if values
    }


def write_json(request: Request, status: int, body: object, headers: Mapping[str, str]) -> bytes:
    request.setResponseCode(status)
    for name, value in headers.items():
        request.setHeader(name, value)
    request.setHeader(b"cache-control", b"no-store")
    if status == 204 or (body is None and status < 300):
        return b""
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


class Router(Resource):
    """Serves a route table under one prefix (mounted at ``/api``)."""

    isLeaf = True

    def __init__(self, routes: Sequence[Route], tokens: Callable[[], TokenSet]) -> None:
        super().__init__()
        self.routes = tuple(routes)
        self._tokens = tokens

    def render(self, request: Request) -> bytes | int:
        try:
            route, params, token = self._admit(request)
        except ApiError as error:
            if error.status == 403:
                log.warn(
                    "api: refused {method} {path}: {reason}",
                    method=(request.method or b"").decode("ascii", "replace"),
                    path=(request.path or b"").decode("utf-8", "replace"),
                    reason=error.message,
                )
            return self._error(request, error)
        api_request = ApiRequest(request, params, _query(request), token)
        answer: Deferred[Reply] = maybeDeferred(route.handler, api_request)  # type: ignore[call-overload]
        finished = [False]
        request.notifyFinish().addErrback(lambda _: finished.__setitem__(0, True))

        def send(reply: Reply) -> None:
            audit(reply.status)
            if not finished[0]:
                request.write(write_json(request, reply.status, reply.body, reply.headers))
                request.finish()

        def audit(status: int) -> None:
            # Changes are logged with the token's name: who changed what, and how it went.
            if route.access is Access.WRITE:
                log.info(
                    "api: {token} {method} {path} -> {status}",
                    token=token.name,
                    method=route.method,
                    path=unquote((request.path or b"").decode("utf-8", "replace")),
                    status=status,
                )

        def fail(failure: Failure) -> None:
            error = failure.value
            if not isinstance(error, ApiError):
                log.failure(
                    "API {method} {path} failed",
                    failure=failure,
                    method=route.method,
                    path=route.template,
                )
                error = ApiError(500, f"internal error: {type(error).__name__}")
            audit(error.status)
            if not finished[0]:
                request.write(self._error(request, error))
                request.finish()

        answer.addCallbacks(send, fail).addErrback(
            lambda failure: log.failure("API reply failed", failure=failure)
        )
        return NOT_DONE_YET

    def _admit(self, request: Request) -> tuple[Route, dict[str, str], Token]:
        token = self._tokens().from_header(request.getHeader(b"authorization"))
        if token is None:
            raise ApiError(401, "a valid bearer token is required", "Authorization")
        path = unquote((request.path or b"/").decode("utf-8", "replace"))
        method = (request.method or b"GET").decode("ascii", "replace").upper()
        allowed: list[str] = []
        for route in self.routes:
            match = route.pattern.match(path)
            if match is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                if not token.access.allows(route.access):
                    raise ApiError(
                        403, f"token {token.name!r} is read-only; this needs a write token"
                    )
                return route, match.groupdict(), token
            allowed.append(route.method)
        if allowed:
            request.setHeader(b"allow", ", ".join(sorted(set(allowed))).encode())
            raise ApiError(405, f"{method} is not allowed here (allowed: {', '.join(allowed)})")
        raise ApiError(404, f"no such resource: {path}")

    @staticmethod
    def _error(request: Request, error: ApiError) -> bytes:
        headers = {"www-authenticate": 'Bearer realm="pxetwist"'} if error.status == 401 else {}
        return write_json(request, error.status, error.as_json(), headers)
