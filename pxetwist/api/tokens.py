"""Bearer tokens for the API, from a YAML file kept out of the main config.

The file maps token names to ``{token: STRING, access: read|write}``.  A request is matched
against every token with :func:`hmac.compare_digest` over fixed-length digests, always walking
the whole list, so neither the answer's timing nor an early exit tells how close a guess was.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from pathlib import Path

import attrs
import yaml
from twisted.logger import Logger

from pxetwist.config import ConfigError

log = Logger()


class Access(enum.Enum):
    READ = "read"
    WRITE = "write"

    def allows(self, needed: Access) -> bool:
        return self is Access.WRITE or needed is Access.READ


@attrs.frozen
class Token:
    name: str
    digest: bytes = attrs.field(repr=False)  # sha256 of the secret: never kept in clear
    access: Access


def _digest(secret: str | bytes) -> bytes:
    data = secret.encode("utf-8", "surrogateescape") if isinstance(secret, str) else secret
    return hashlib.sha256(data).digest()


_MIN_LENGTH = 16


@attrs.frozen
class TokenSet:
    tokens: tuple[Token, ...] = ()

    @classmethod
    def parse(cls, text: str, source: str) -> TokenSet:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"not valid YAML: {error}", source=source) from None
        if document is None:
            document = {}
        if not isinstance(document, dict):
            raise ConfigError("must be a mapping of token names to {token, access}", source=source)
        tokens = []
        seen: dict[bytes, str] = {}
        for name, entry in document.items():
            if not isinstance(entry, dict) or set(entry) - {"token", "access"}:
                raise ConfigError(
                    "must be a mapping with 'token' and 'access'", source=source, path=(str(name),)
                )
            secret = entry.get("token")
            if not isinstance(secret, str) or len(secret) < _MIN_LENGTH:
                raise ConfigError(
                    f"must be a string of at least {_MIN_LENGTH} characters",
                    source=source,
                    path=(str(name), "token"),
                )
            try:
                access = Access(entry.get("access", "read"))
            except ValueError:
                raise ConfigError(
                    f"{entry.get('access')!r} is not read or write",
                    source=source,
                    path=(str(name), "access"),
                ) from None
            digest = _digest(secret)
            if digest in seen:
                raise ConfigError(
                    f"the same token as {seen[digest]!r}", source=source, path=(str(name), "token")
                )
            seen[digest] = str(name)
            tokens.append(Token(str(name), digest, access))
        return cls(tuple(tokens))

    @classmethod
    def load(cls, path: Path | None) -> TokenSet:
        if path is None:
            return cls()
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except OSError as error:
            raise ConfigError(
                f"cannot read the API tokens file: {error.strerror}", source=str(path)
            ) from None
        if mode & 0o077:
            log.warn(
                "api: the tokens file {path} can be read by other users (mode {mode:o}); "
                "chmod 600 it",
                path=str(path),
                mode=mode & 0o777,
            )
        return cls.parse(text, str(path))

    def find(self, secret: str | bytes) -> Token | None:
        """The token whose secret this is, compared in constant time against all of them."""
        digest = _digest(secret)
        found: Token | None = None
        for token in self.tokens:
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found

    def named(self, name: str) -> Token | None:
        for token in self.tokens:
            if token.name == name:
                return token
        return None

    def from_header(self, header: bytes | None) -> Token | None:
        """The token of an ``Authorization: Bearer TOKEN`` header, if it is one of ours."""
        if not header:
            return None
        scheme, _, secret = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not secret.strip():
            return None
        return self.find(secret.strip())
