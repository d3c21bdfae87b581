"""Export paths: ``{mac}``/``{name}`` expansion, confinement under nfs.root, opaque pseudo paths.

An export path in the config is a *template* relative to ``nfs.root``.  It is checked twice:

* at config load (:func:`template_problem`, :func:`prefix_escape`): not empty, not absolute, no
  ``..`` component, only the placeholders ``{mac}`` and ``{name}``, no character Ganesha's config
  syntax or a kernel command line would trip on, and the part before the first placeholder must
  not lead out of the root through a symlink;
* when it is granted (:func:`confine`): the expanded path, with every symlink resolved, must still
  lie under the root (a symlink made after start-up is refused there).

Pseudo paths are what clients mount (``SERVER:/PSEUDO``).  Ganesha's pseudo file system lists
the names of exports to any client that looks, so a pseudo path must not say whose it is: it is
a keyed hash (HMAC-SHA256 with a secret kept under ``data_dir``) of the machine's MAC and the
export's path, stable across restarts for as long as the key file is kept.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path, PurePosixPath
from typing import Final

from pxetwist.policy.values import MacAddress

PLACEHOLDERS: Final = frozenset({"mac", "name"})
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# Printable, no quote or backslash (Ganesha config strings), no space (kernel command lines).
_UNSAFE = re.compile(r'[\x00-\x20\x7f"\\\'`$;#]')
KEY_BYTES: Final = 32
_TOKEN_BYTES: Final = 15  # 120 bits, 24 base32 characters


class NfsPathError(ValueError):
    """An export path that must not be served; the message says why."""


def template_problem(template: str) -> str | None:
    """Why this export path template cannot be used, or ``None`` when it is fine."""
    if not template:
        return "must not be empty"
    if template.startswith("/"):
        return f"{template!r} is absolute; export paths are relative to nfs.root"
    for name in _PLACEHOLDER.findall(template):
        if name not in PLACEHOLDERS:
            return f"{template!r}: unknown placeholder {{{name}}} (known: {{mac}}, {{name}})"
    bare = _PLACEHOLDER.sub("x", template)
    if "{" in bare or "}" in bare:
        return f"{template!r}: unbalanced brace"
    if _UNSAFE.search(bare):
        return f"{template!r} contains a space, quote, backslash or control character"
    parts = PurePosixPath(template).parts
    if ".." in parts or ".." in template.split("/"):
        return f"{template!r} leads out of nfs.root ('..')"
    return None


def literal_prefix(template: str) -> str:
    """The leading path components that contain no placeholder (``hosts`` of ``hosts/{mac}``)."""
    parts: list[str] = []
    for part in template.split("/"):
        if "{" in part:
            break
        if part and part != ".":
            parts.append(part)
    return "/".join(parts)


def prefix_escape(root: Path, template: str) -> str | None:
    """Whether the existing part of ``template``'s literal prefix leads out of ``root``.

    Returns a description of the escape (where the symlink points), or ``None``.  Only what
    exists can be checked at load time; :func:`confine` checks the rest when the export is made.
    """
    prefix = literal_prefix(template)
    if not prefix:
        return None
    real_root = root.resolve()
    candidate = real_root / prefix
    resolved = candidate.resolve()
    if not resolved.is_relative_to(real_root):
        return f"{template!r} leads out of nfs.root through a symlink (to {resolved})"
    return None


def expand(template: str, mac: MacAddress, name: str | None) -> str:
    """The template with ``{mac}`` (dashed) and ``{name}`` filled in, as a clean relative path."""

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "mac":
            return mac.dashed
        if name is None:
            raise NfsPathError(f"{template!r} uses {{name}} but machine {mac} has no name")
        return name

    problem = template_problem(template)
    if problem is not None:
        raise NfsPathError(problem)
    expanded = _PLACEHOLDER.sub(fill, template)
    problem = template_problem(expanded)
    if problem is not None:
        raise NfsPathError(problem)
    return "/".join(part for part in expanded.split("/") if part and part != ".")


def confine(root: Path, relative: str) -> Path:
    """The real directory ``relative`` names under ``root``; :class:`NfsPathError` if it escapes.

    Symlinks are resolved all the way, so a link pointing out of the root is refused whether it
    was there at start-up or made since.  The path need not exist yet.
    """
    real_root = root.resolve()
    resolved = (real_root / relative).resolve()
    if not resolved.is_relative_to(real_root):
        raise NfsPathError(f"{relative!r} leads out of nfs.root (to {resolved})")
    if resolved == real_root:
        raise NfsPathError(f"{relative!r} is nfs.root itself; export a directory under it")
    return resolved


def load_or_create_key(path: Path) -> bytes:
    """The pseudo-path key, made (mode 0600) on first use so pseudo paths stay stable."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return key
    if len(key) < 16:
        raise NfsPathError(f"{path}: the pseudo-path key is too short ({len(key)} bytes)")
    return key


def pseudo_path(key: bytes, mac: MacAddress, relative: str) -> str:
    """The opaque pseudo path a machine mounts an export at: ``/`` and 24 base32 characters.

    Keyed, so that nobody without the key can tell from the name which MAC it belongs to (MACs
    are few enough to try them all against an unkeyed hash); per machine and path, so two
    machines sharing a directory get separate exports with separate client lists.
    """
    digest = hmac.new(key, mac.octets + b"\0" + relative.encode(), hashlib.sha256).digest()
    token = base64.b32encode(digest[:_TOKEN_BYTES]).decode("ascii").lower()
    return "/" + token
