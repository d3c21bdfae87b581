"""Per-machine boot-loader configs rendered from a :class:`BootDecision`: iPXE, PXELINUX, GRUB.

A decision names a kernel, initrds and a command line (or an iPXE script, or "boot locally"); each
boot loader wants those in its own syntax and fetches files its own way, so two things happen
here:

* **Locations.**  Kernel and initrd values are URLs (``http://``, ``tftp://``) or paths under the
  HTTP or TFTP root.  :func:`ipxe_location`, :func:`pxelinux_location` and :func:`grub_location`
  turn one value into what that loader can fetch: iPXE takes URLs (HTTP when the file is under the
  HTTP root, else TFTP), PXELINUX paths relative to the TFTP root, GRUB ``/path`` on the TFTP
  root or ``(http,server:port)/path``; U-Boot, which reads PXELINUX's format, only TFTP paths
  from its server (:func:`uboot_location`: a URL to us becomes the path, anything else it
  cannot reach is an error).  ``{server}``, ``{http_port}`` and ``{tftp_port}`` in a value are
  filled in first by :func:`~pxetwist.policy.placeholders.expand_placeholders`; iPXE's own
  ``${...}`` stay.
* **Templates.**  The config text comes from a Jinja2 template (``ipxe.j2``, ``pxelinux.j2``,
  ``grub.j2``), looked up first in the operator's ``templates:`` directory and then among the
  bundled ones (``pxetwist/templates``).  Undefined variables are errors (``StrictUndefined``),
  and every failure, from a syntax error to a missing variable, is one :class:`RenderError`
  naming the template file and line.  Rendering produces the whole text or raises: nothing ever
  serves half a file.

The functions are pure apart from two ``stat`` calls per path (is the file under the HTTP root?),
so the TFTP and HTTP front ends call them straight from the reactor.
"""

from __future__ import annotations

import enum
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Address
from pathlib import Path, PurePosixPath
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import attrs
import jinja2

from pxetwist.config.model import Config, HttpConfig, TftpConfig
from pxetwist.paths import PathRefused, normalize_request_path, resolve_path
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.placeholders import expand_nfs, expand_placeholders
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import BootAction, Firmware

#: The templates shipped with pxetwist; an operator's ``templates:`` directory is searched first.
BUNDLED_TEMPLATES: Final = Path(__file__).resolve().parents[1] / "templates"

_UNSAFE = re.compile(r"[\x00-\x20\x7f]")
_TFTP_WELL_KNOWN_PORT: Final = 69  # what a tftp:// URL without a port means (RFC 3617)
_HTTP_DEFAULTS: Final = HttpConfig()
_TFTP_DEFAULTS: Final = TftpConfig()

#: The booted OS's call-back route (:mod:`pxetwist.http.callback`).
DONE_PATH: Final = "/boot/done"


def done_url(server: str, http_port: int, mac: object) -> str:
    """The call-back URL a booted OS fetches to say it is up: the ``done_url`` variable."""
    return f"http://{server}:{http_port}{DONE_PATH}?mac={mac}"


class RenderError(Exception):
    """A config could not be rendered; the message names the template and, if known, the line.

    ``template`` is the template's name (``pxelinux.j2``), ``filename`` the file it was loaded
    from (the operator's copy or the bundled one), ``line`` the 1-based line in it.
    """

    def __init__(
        self, template: str, message: str, *, filename: str | None = None, line: int | None = None
    ) -> None:
        where = template if filename is None else f"{template} ({filename})"
        if line is not None:
            where += f" line {line}"
        super().__init__(f"template {where}: {message}")
        self.template = template
        self.filename = filename
        self.line = line
        self.message = message


class LoaderKind(enum.Enum):
    """The boot loaders pxetwist writes configs for; the value is the template's stem."""

    IPXE = "ipxe"
    PXELINUX = "pxelinux"
    GRUB = "grub"

    @property
    def template(self) -> str:
        return f"{self.value}.j2"


@attrs.frozen
class ServingContext:
    """Where the client reached us, and what it can fetch from where.

    ``server`` is the address the client should use (the interface address the request came to,
    or the config's ``server_address``).  ``http_root`` is ``None`` when HTTP is not served, so
    nothing is ever pointed at it; ``tftp_root`` is ``None`` when TFTP is not served.
    """

    server: str
    http_port: int = _HTTP_DEFAULTS.port
    tftp_port: int = _TFTP_DEFAULTS.port
    http_root: Path | None = None
    tftp_root: Path | None = None

    def expand(self, text: str) -> str:
        return expand_placeholders(
            text, server=self.server, http_port=self.http_port, tftp_port=self.tftp_port
        )


def serving_context(
    config: Config,
    local: IPv4Address | str,
    *,
    http_port: int | None = None,
    tftp_port: int | None = None,
    over_http: LoaderKind | None = None,
) -> ServingContext:
    """What a config rendered for a client that reached us at ``local`` may point it at.

    The one place TFTP, HTTP and ``explain`` get their :class:`ServingContext` from.

    * ``server``: :meth:`Config.reachable_address <pxetwist.config.model.Config.
      reachable_address>` (``server_address`` when set, else ``local``).
    * Ports: the ones the caller is bound to, when it says (``http_port``, ``tftp_port``: port 0
      in tests and benchmarks), else the config's; with ``server_address`` set always the
      config's, since the client reaches whatever is in front of us at those.
    * Roots: ``http_root`` when HTTP is served, ``tftp_root`` when TFTP is.  A config sent over
      HTTP (``over_http`` is its loader) to anything but iPXE gets no TFTP root: a GRUB loaded
      over HTTP fetches ``/path`` from the HTTP server it came from, so a file under the HTTP
      root gets an explicit ``(http,...)`` location and anything else stays relative to GRUB's
      own (HTTP) root.
    """
    behind = config.server_address is not None
    tftp_served = config.tftp.enabled and over_http in (None, LoaderKind.IPXE)
    return ServingContext(
        server=str(config.reachable_address(IPv4Address(local))),
        http_port=config.http.port if behind or http_port is None else http_port,
        tftp_port=config.tftp.port if behind or tftp_port is None else tftp_port,
        http_root=config.http.root if config.http.enabled else None,
        tftp_root=config.tftp.root if tftp_served else None,
    )


def _is_url(value: str) -> bool:
    return "://" in value


def _check_url(value: str) -> str:
    if _UNSAFE.search(value):
        raise ValueError(f"{value!r} contains a space or control character")
    return value


def _relative(value: str) -> str:
    """A path value as a clean root-relative path; ``..`` above the root is refused."""
    try:
        relative = normalize_request_path(value)
    except PathRefused as refused:
        raise ValueError(f"{value!r}: {refused.reason}") from None
    if _UNSAFE.search(relative):
        raise ValueError(f"{value!r} contains a space or control character")
    return relative


def _under(root: Path | None, relative: str) -> bool:
    """Is there a regular file at ``relative`` under ``root`` (symlinks resolved, confined)?"""
    if root is None:
        return False
    try:
        resolve_path(root, relative)
    except (PathRefused, OSError):
        return False
    return True


def _url_path(relative: str) -> str:
    return quote(relative, safe="/-._~!$&'()*+,;=:@")


def _http_url(context: ServingContext, relative: str) -> str:
    return f"http://{context.server}:{context.http_port}/{_url_path(relative)}"


def ipxe_location(value: str, context: ServingContext) -> str:
    """What iPXE fetches: a URL as is; a path as HTTP if the file is under the HTTP root, else TFTP.

    HTTP is preferred because it is many times faster than TFTP for kernels and initrds.
    """
    value = context.expand(value)
    if _is_url(value):
        return _check_url(value)
    relative = _relative(value)
    if _under(context.http_root, relative):
        return _http_url(context, relative)
    port = "" if context.tftp_port == _TFTP_WELL_KNOWN_PORT else f":{context.tftp_port}"
    return f"tftp://{context.server}{port}/{_url_path(relative)}"


def pxelinux_location(value: str, context: ServingContext, *, absolute: bool = False) -> str:
    """What PXELINUX fetches: a TFTP-root-relative path, or a URL as is.

    PXELINUX resolves relative names against its path prefix, the directory it was loaded from;
    when that is not the TFTP root (the config was asked for as ``bios/pxelinux.cfg/...``) pass
    ``absolute=True`` and the path gets PXELINUX's ``::`` prefix, "absolute on the TFTP server".
    A path that exists only under the HTTP root becomes an HTTP URL, which ``lpxelinux.0`` can
    fetch (plain ``pxelinux.0`` could not fetch it over TFTP anyway).
    """
    value = context.expand(value)
    if _is_url(value):
        return _check_url(value)
    relative = _relative(value)
    if not _under(context.tftp_root, relative) and _under(context.http_root, relative):
        return _http_url(context, relative)
    return f"::{relative}" if absolute else relative


def grub_location(value: str, context: ServingContext) -> str:
    """What GRUB fetches: ``/path`` on the TFTP root it booted from, ``(http,host:port)/path``.

    GRUB has no ``https`` and no URL syntax: ``http://`` and ``tftp://`` URLs are rewritten as
    GRUB device paths, anything else is refused.
    """
    value = context.expand(value)
    if _is_url(value):
        parts = urlsplit(_check_url(value))
        scheme = parts.scheme.lower()
        if scheme not in ("http", "tftp") or not parts.netloc:
            raise ValueError(f"GRUB cannot fetch {value!r} (only http:// and tftp://)")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return f"({scheme},{parts.netloc}){path}"
    relative = _relative(value)
    if not _under(context.tftp_root, relative) and _under(context.http_root, relative):
        return f"(http,{context.server}:{context.http_port})/{relative}"
    return f"/{relative}"


class Unreachable(ValueError):
    """A kernel or initrd value the asking client has no way to fetch."""


def _our_tftp_path(value: str, context: ServingContext, client: str) -> str:
    """The TFTP path on us that a URL names, for a client that only fetches TFTP paths.

    A ``tftp://`` URL to us becomes its path; an ``http://`` URL to our HTTP server becomes the
    path when the same file is under the TFTP root.  Anything else is :class:`Unreachable`.
    """
    parts = urlsplit(_check_url(value))
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # not a number: not a port of ours
        port = -1
    ours = parts.hostname == context.server
    if scheme == "tftp" and ours and (port or _TFTP_WELL_KNOWN_PORT) == context.tftp_port:
        return _relative(unquote(parts.path))
    if scheme == "http" and ours and (port or 80) == context.http_port:
        relative = _relative(unquote(parts.path))
        if _under(context.tftp_root, relative):
            return relative
        raise Unreachable(
            f"{client} cannot fetch {value!r}: it fetches over TFTP only, and the file is not "
            "under the TFTP root"
        )
    raise Unreachable(
        f"{client} cannot fetch {value!r}: it fetches paths over TFTP from its server only"
    )


def uboot_location(value: str, context: ServingContext, *, directory: str = "") -> str:
    """What U-Boot's ``pxe`` command fetches: a TFTP path on its server, relative to a directory.

    U-Boot reads the config like PXELINUX but fetches every name with its ``tftp`` command from
    ``serverip``, prefixed with the directory of its boot file (the ``directory`` the config
    was asked from); it has no URLs, so a ``tftp://`` URL in the file is asked for literally and
    fails (firmware notes).  So: a URL to us becomes its path, a path stays a path, and what it
    cannot reach (another server, a file only under the HTTP root) is :class:`Unreachable`.
    """
    value = context.expand(value)
    if _is_url(value):
        relative = _our_tftp_path(value, context, "U-Boot")
    else:
        relative = _relative(value)
        if not _under(context.tftp_root, relative) and _under(context.http_root, relative):
            raise Unreachable(
                f"U-Boot cannot fetch {value!r}: it is only under the HTTP root, and U-Boot "
                "fetches over TFTP"
            )
    if not directory:
        return relative
    if relative.startswith(directory + "/"):
        return relative[len(directory) + 1 :]
    return "../" * (directory.count("/") + 1) + relative


def config_directory(path: str | None) -> str:
    """The directory a ``.../pxelinux.cfg/<name>`` request was made under (``""``: the root)."""
    if not path:
        return ""
    directory, _, _ = path.rpartition("/")
    parent, _, last = directory.rpartition("/")
    return parent if last.lower() == "pxelinux.cfg" else ""


def _basename(location: str) -> str:
    """The name iPXE gives an image it downloaded: the last component of the URL's path."""
    path = urlsplit(location).path if _is_url(location) else location
    return PurePosixPath(path).name or location


def _one_line(text: str | None) -> str:
    """Collapse whitespace, so a stray newline cannot end a config line early."""
    return " ".join((text or "").split())


def has_boot_config(kind: LoaderKind, decision: BootDecision | None) -> bool:
    """Does the decision say something this loader's config can express?

    A kernel (with initrds and command line), or "boot locally"; for iPXE also a script.  A
    decision that only names a boot program has no per-machine config: the program is a file.
    """
    if decision is None or decision.action is BootAction.IGNORE:
        return False
    if decision.action is BootAction.LOCAL or decision.kernel is not None:
        return True
    return kind is LoaderKind.IPXE and decision.script is not None


_Locate = Callable[[str, ServingContext], str]


class Renderer:
    """Renders boot-loader configs with operator templates first, then the bundled ones."""

    def __init__(self, override_dir: Path | None = None) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if override_dir is not None:
            loaders.append(jinja2.FileSystemLoader(str(override_dir)))
        loaders.append(jinja2.FileSystemLoader(str(BUNDLED_TEMPLATES)))
        self.override_dir = override_dir
        self._environment = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=True,
        )

    def render(
        self,
        kind: LoaderKind,
        decision: BootDecision,
        request: BootRequest,
        context: ServingContext,
        *,
        absolute_paths: bool = False,
        nfs: Sequence[str] = (),
    ) -> str:
        """The complete config text, or :class:`RenderError`.

        For iPXE a decision's ``script`` is returned as written (placeholders filled, and a
        ``#!ipxe`` line added if it lacks one, since iPXE will not run a script without it);
        everything else goes through the loader's template.  ``absolute_paths`` is for PXELINUX
        configs asked for below a directory (see :func:`pxelinux_location`).  The locations fit
        the client that asks: a PXELINUX-format config for U-Boot (``request.firmware``) gets
        TFTP paths only (:func:`uboot_location`), and what it cannot fetch is a RenderError.
        ``nfs`` are the machine's NFS exports as ``SERVER:/PSEUDO``: ``{nfs}``, ``{nfs2}``... in
        the command line, a script or the rendered text become them; templates get them as ``nfs``.
        """
        name = kind.template
        if decision.action is BootAction.IGNORE:
            raise RenderError(name, "the decision is 'ignore': there is nothing to boot")
        text = self._render(kind, decision, request, context, absolute_paths, nfs)
        try:
            return expand_nfs(text, nfs)
        except ValueError as error:
            raise RenderError(name, str(error)) from None

    def _render(
        self,
        kind: LoaderKind,
        decision: BootDecision,
        request: BootRequest,
        context: ServingContext,
        absolute_paths: bool,
        nfs: Sequence[str],
    ) -> str:
        name = kind.template
        if kind is LoaderKind.IPXE and decision.script is not None:
            script = context.expand(decision.script)
            if not script.lstrip().startswith("#!ipxe"):
                script = "#!ipxe\n" + script
            return script if script.endswith("\n") else script + "\n"
        if kind is LoaderKind.PXELINUX and request.firmware is Firmware.UBOOT:
            directory = config_directory(request.path)
            if len(decision.initrds) > 1 and decision.action is not BootAction.LOCAL:
                raise RenderError(
                    name, f"U-Boot loads one initrd; the decision names {len(decision.initrds)}"
                )

            def locate(value: str, context: ServingContext) -> str:
                return uboot_location(value, context, directory=directory)
        elif kind is LoaderKind.PXELINUX:
            absolute = absolute_paths

            def locate(value: str, context: ServingContext) -> str:
                return pxelinux_location(value, context, absolute=absolute)
        else:
            locate = ipxe_location if kind is LoaderKind.IPXE else grub_location
        variables = {
            **self._variables(name, kind, decision, request, context, locate),
            "nfs": list(nfs),
        }
        try:
            template = self._environment.get_template(name)
        except jinja2.TemplateSyntaxError as error:
            raise RenderError(
                name, error.message or "syntax error", filename=error.filename, line=error.lineno
            ) from error
        except jinja2.TemplateNotFound:
            raise RenderError(
                name, "no such template, neither the operator's nor bundled"
            ) from None
        try:
            return template.render(variables)
        except jinja2.TemplateError as error:
            raise RenderError(
                name,
                error.message or type(error).__name__,
                filename=template.filename,
                line=_template_line(error, template.filename),
            ) from error
        except Exception as error:
            raise RenderError(
                name,
                f"{type(error).__name__}: {error}",
                filename=template.filename,
                line=_template_line(error, template.filename),
            ) from error

    def _variables(
        self,
        name: str,
        kind: LoaderKind,
        decision: BootDecision,
        request: BootRequest,
        context: ServingContext,
        locate: _Locate,
    ) -> Mapping[str, Any]:
        def place(what: str, value: str | None) -> str | None:
            if value is None:
                return None
            try:
                return locate(value, context)
            except ValueError as error:
                raise RenderError(name, f"decision {what}: {error}") from None

        local = decision.action is BootAction.LOCAL
        callback = done_url(context.server, context.http_port, request.mac)
        kernel = None if local else place("kernel", decision.kernel)
        if not local and kernel is None and not (kind is LoaderKind.IPXE and decision.program):
            raise RenderError(name, "the decision has no kernel to boot")
        initrds = [] if local else [place("initrd", value) or "" for value in decision.initrds]
        program = (
            place("program", decision.program)
            if kind is LoaderKind.IPXE and not local and kernel is None
            else None
        )
        return {
            "action": decision.action.value,
            "kernel": kernel,
            "initrds": initrds,
            "initrd_names": [_basename(location) for location in initrds],
            "cmdline": _one_line(context.expand(decision.cmdline or "")).replace(
                "{done_url}", callback
            ),
            "done_url": callback,
            "program": program,
            "mac": str(request.mac),
            "name": decision.name,
            "group": decision.group,
            "reason": _one_line(decision.reason),
            "policy": decision.policy,
            "server": context.server,
            "http_port": context.http_port,
            "tftp_port": context.tftp_port,
            "request": request,
            "decision": decision,
        }


def _template_line(error: BaseException, filename: str | None) -> int | None:
    """The template line an exception was raised on (Jinja maps its frames to template lines)."""
    if filename is None:
        return getattr(error, "lineno", None)
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line


__all__ = [
    "BUNDLED_TEMPLATES",
    "LoaderKind",
    "RenderError",
    "Renderer",
    "ServingContext",
    "Unreachable",
    "config_directory",
    "done_url",
    "grub_location",
    "has_boot_config",
    "ipxe_location",
    "pxelinux_location",
    "serving_context",
    "uboot_location",
]
