"""A small blocking client of the operator API, for the ``pxetwist`` command line.

Where the server is: ``--api URL``, else ``$PXETWIST_API``, else ``api.listen`` of the config
(``--config``, as the other commands take it).  The token: ``--token-file PATH`` (its first
line), else ``$PXETWIST_API_TOKEN``, else ``$PXETWIST_API_TOKEN_FILE``.  A token is never read
from the command line itself, where ``ps`` would show it.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import attrs

DEFAULT_URL = "http://127.0.0.1:8090"


class ApiClientError(Exception):
    """The server refused (``status`` set) or could not be reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--api", metavar="URL", help=f"the API's base URL (default {DEFAULT_URL})")
    group.add_argument("--config", "-c", help="take the API address from this config's api.listen")
    group.add_argument(
        "--token-file", metavar="PATH", help="a file whose first line is the API token"
    )
    group.add_argument("--json", action="store_true", help="print the server's JSON as it is")


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    """``--api`` and ``--token-file`` for a command that otherwise works on this machine."""
    group = parser.add_argument_group("a remote server, through its API")
    group.add_argument("--api", metavar="URL", help="ask the server's API at this URL")
    group.add_argument(
        "--token-file", metavar="PATH", help="a file whose first line is the API token"
    )


def _token(args: argparse.Namespace) -> str:
    path = getattr(args, "token_file", None) or None
    if path is None and os.environ.get("PXETWIST_API_TOKEN"):
        return os.environ["PXETWIST_API_TOKEN"].strip()
    path = path or os.environ.get("PXETWIST_API_TOKEN_FILE")
    if not path:
        raise ApiClientError(
            "no API token: give --token-file, or set PXETWIST_API_TOKEN or PXETWIST_API_TOKEN_FILE"
        )
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ApiClientError(f"cannot read the token file {path}: {error.strerror}") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise ApiClientError(f"the token file {path} is empty")
    return token


def _base_url(args: argparse.Namespace) -> str:
    if getattr(args, "api", None):
        return str(args.api).rstrip("/")
    if os.environ.get("PXETWIST_API"):
        return os.environ["PXETWIST_API"].rstrip("/")
    if getattr(args, "config", None):
        from pxetwist.config import load_config

        api = load_config(args.config).api
        host = "127.0.0.1" if api.host in ("0.0.0.0", "") else api.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{api.port}"
    return DEFAULT_URL


@attrs.frozen
class ApiClient:
    base: str
    token: str = attrs.field(repr=False)
    timeout: float = 30.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ApiClient:
        return cls(_base_url(args), _token(args))

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        """The answer's JSON (``None`` for 204), or :class:`ApiClientError`."""
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                answer = json.loads(raw)
                message, field = answer.get("message", ""), answer.get("field")
            except (ValueError, AttributeError):
                message, field = raw.decode("utf-8", "replace")[:200], None
            where = f" ({field})" if field else ""
            raise ApiClientError(f"{error.code}{where}: {message}", error.code, field) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ApiClientError(f"cannot reach the API at {self.base}: {reason}") from None
        return json.loads(raw) if raw.strip() else None
