# -*- test-case-name: tests.http.test_scripts -*-
"""Boot scripts written per machine: iPXE scripts and GRUB configs, from the policy's decision.

Which names are scripts (:func:`script_name`):

* ``boot.ipxe`` (in any directory): the script URL the ``ipxe`` boot entry points iPXE at,
  ``/boot.ipxe?mac=${mac}&uuid=${uuid}&arch=${buildarch}`` (protocol-reference §4.2).
  ``<mac>.ipxe`` names its machine in the file name. Other ``*.ipxe`` files are plain files.
* GRUB's network search, for a GRUB loaded over HTTP: ``grub.cfg``, ``grub.cfg-01-<mac>``,
  ``grub.cfg-<mac>`` (any notation), ``grub.cfg-<UUID>`` and the client's address in hex and its
  prefixes, in any directory (``/grub/grub.cfg``). The naming is the TFTP front end's
  (:func:`pxetwist.bootnames.match_generated`), so both protocols answer the same names.
* PXELINUX configs are not generated over HTTP: ``pxelinux.cfg/...`` is an ordinary file here.

Who is asking, what the policy decides and the rendering are worked out by
:class:`~pxetwist.bootconfig.BootConfigResolver`, the same as for TFTP: the MAC in the file name,
else ``mac=`` in the query, else whatever DHCP saw at the client's address. A machine DHCP never
saw gets a fresh :class:`BootRequest` whose architecture comes from ``arch=`` (iPXE's
``${buildarch}``, refined by ``platform=${platform}`` if given; see :func:`arch_from_query`).
Whoever fetches an iPXE script *is* iPXE, so such a request always carries an iPXE user class,
and policies answer it as they answer iPXE's DHCP request.

What is answered:

* 200 ``text/plain`` with the whole rendered text, ``Content-Length`` and ``no-store``. A decision
  with a kernel renders the loader's template (iPXE: ``kernel``/``initrd``/``boot``, with
  ``initrd=<name>`` on the command line, which the EFI stub needs to find its initrd); ``local``
  renders ``exit``; an iPXE ``script`` is sent as written; a decision naming only a boot program
  makes iPXE ``chain`` to it.
* 404 with a one-line reason in the body, and a log line, when no machine can be identified,
  when no policy decides for it, or when the policy ignores it.
* 404, or the file of that name under the HTTP root if there is one, when the decision has
  nothing this loader can run: no kernel for GRUB, or for iPXE nothing but a boot program that
  is this very script (chaining to it would loop). So an operator's own static ``boot.ipxe``
  still serves machines the policy knows only as "an iPXE client", but it never overrides what
  the policy decided, and it is never sent to a machine the policy ignores.
* 500 and an error log line naming the template and line when rendering fails; nothing of the
  script is sent, since the text is rendered completely before the first byte is written.
* 400 for a ``mac=`` that is not a MAC address (an unexpanded ``${mac}``, say).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Final, Protocol, cast
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pxetwist.bootconfig import BootConfig, BootConfigResolver, ConfigAsk, ConfigStatus
from pxetwist.bootnames import match_generated
from pxetwist.context import ServerContext
from pxetwist.http.static import PathRefused, resolve_path, serve_file
from pxetwist.netinfo import ipv4_host
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.render import (
    LoaderKind,
    Renderer,
    ServingContext,
    ipxe_location,
    serving_context,
)
from pxetwist.policy.values import (
    Arch,
    InvalidMacAddress,
    MacAddress,
    Stage,
)

__all__ = [
    "GENERATED_ATTRIBUTE",
    "MAC_ATTRIBUTE",
    "NOTE_ATTRIBUTE",
    "BootScripts",
    "ScriptName",
    "arch_from_query",
    "script_name",
]

_log = Logger()

MAC_ATTRIBUTE: Final = "boot_mac"
"""The request attribute a script sets to the MAC it identified, for the access log."""

GENERATED_ATTRIBUTE: Final = "boot_generated"
"""The request attribute set when the body is a script or config written for the machine."""

NOTE_ATTRIBUTE: Final = "boot_note"
"""The request attribute with what the response event should say besides the HTTP facts: the
decision (``loader``, ``policy``, ``action``, ``reason``) or why there is no script (``why``)."""

_TEXT: Final = b"text/plain; charset=utf-8"

# iPXE's ${buildarch} (ipxe.org/cfg/buildarch) and ${platform} (ipxe.org/cfg/platform) to the
# option-93 architecture the same machine would have sent over DHCP.
_EFI_ARCHES: Final[Mapping[str, Arch]] = {
    "i386": Arch.EFI_IA32,
    "x86_64": Arch.EFI_X86_64,
    "arm32": Arch.EFI_ARM32,
    "arm64": Arch.EFI_ARM64,
    "riscv32": Arch.EFI_RISCV32,
    "riscv64": Arch.EFI_RISCV64,
    "loong64": Arch.EFI_LOONGARCH64,
}
_BIOS_ARCHES: Final = frozenset({"i386", "x86_64"})


def arch_from_query(buildarch: str | None, platform: str | None = None) -> Arch | None:
    """The option-93 architecture for iPXE's ``${buildarch}`` and (optional) ``${platform}``.

    ``platform`` decides between BIOS and UEFI where it is given (``pcbios`` or ``efi``). Without
    it, ``i386`` means BIOS (iPXE's BIOS builds, ``undionly.kpxe`` included, are 32-bit even on
    64-bit machines) and every other architecture means UEFI (``x86_64`` iPXE is almost always
    ``ipxe.efi``/``snponly.efi``). A decimal number is taken as an option-93 value as is.
    Anything else (an empty or unexpanded variable) is None: no architecture.
    """
    value = (buildarch or "").strip().lower()
    kind = (platform or "").strip().lower()
    if value.isdigit() and len(value) <= 5:
        return Arch(int(value)).normalized() if int(value) <= 0xFFFF else None
    if kind == "pcbios":
        return Arch.BIOS if value in _BIOS_ARCHES else None
    if kind == "efi" or value != "i386":
        return _EFI_ARCHES.get(value)
    return Arch.BIOS


@attrs.frozen
class ScriptName:
    """A request path that names a generated config: for which loader, and the MAC if it names
    one. ``path`` is the clean root-relative path (``grub/grub.cfg``)."""

    kind: LoaderKind
    mac: MacAddress | None
    path: str


def _clean_path(segments: Sequence[bytes]) -> str | None:
    """``a/b/c`` from URL path segments, or None for anything not plainly a file path (those go
    to :class:`~pxetwist.http.static.BootFiles`, which refuses them with the right status)."""
    if not segments or segments[-1] == b"":
        return None
    names: list[str] = []
    for segment in segments:
        if segment == b"":
            continue
        if segment in (b".", b"..") or any(c in segment for c in (b"/", b"\\", b"\x00")):
            return None
        try:
            names.append(segment.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    return "/".join(names) or None


def script_name(segments: Sequence[bytes], client: IPv4Address | None) -> ScriptName | None:
    """Whether URL path *segments* (``request.postpath``) name a generated config; see the module
    docstring for which names do. *client* is needed for GRUB's hex-address names: only the
    asking client's own address (and its prefixes) is generated, another machine's is a file."""
    path = _clean_path(segments)
    if path is None:
        return None
    base = path.rpartition("/")[2].lower()
    if base == "boot.ipxe":
        return ScriptName(LoaderKind.IPXE, None, path)
    generated = match_generated(path, client)
    if generated is None or generated.kind is LoaderKind.PXELINUX:
        return None
    if generated.kind is LoaderKind.IPXE and generated.mac is None:
        return None  # menu.ipxe and friends: the operator's files
    return ScriptName(generated.kind, generated.mac, path)


class _BadQuery(Exception):
    """A query parameter that cannot be what a boot loader sent; the message says which."""


@attrs.frozen
class _Query:
    mac: MacAddress | None = None
    uuid: uuid.UUID | None = None
    arch: Arch | None = None


def _parameter(args: Mapping[bytes, Sequence[bytes]], name: bytes) -> str | None:
    values = args.get(name)
    if not values:
        return None
    text = values[0].decode("utf-8", "replace").strip()
    return text or None


def _parse_query(args: Mapping[bytes, Sequence[bytes]]) -> _Query:
    """``mac``, ``uuid``, ``arch`` and ``platform`` from the query string.

    A bad ``mac`` is an error: a wrong MAC would boot some other machine's config. A bad or empty
    ``uuid`` (iPXE expands ``${uuid}`` to nothing when SMBIOS has none) is just absent.
    """
    mac = None
    text = _parameter(args, b"mac")
    if text is not None:
        try:
            mac = MacAddress.parse(text)
        except InvalidMacAddress:
            raise _BadQuery(f"mac={text!r} is not a MAC address") from None
    machine_uuid = None
    text = _parameter(args, b"uuid")
    if text is not None:
        try:
            machine_uuid = uuid.UUID(text)
        except ValueError:
            machine_uuid = None
    arch = arch_from_query(_parameter(args, b"arch"), _parameter(args, b"platform"))
    return _Query(mac, machine_uuid, arch)


class _ScriptRequest(Protocol):
    """The typed subset of :class:`twisted.web.server.Request` used here."""

    method: bytes
    path: bytes
    args: dict[bytes, list[bytes]]
    postpath: list[bytes] | None
    requestHeaders: Headers
    responseHeaders: Headers
    startedWriting: int

    def setResponseCode(self, code: int) -> None: ...
    def write(self, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def notifyFinish(self) -> Deferred[None]: ...
    def getClientAddress(self) -> Any: ...
    def getHost(self) -> Any: ...


class BootScripts(Resource):
    """A ``twisted.web`` resource answering :func:`script_name` paths with generated configs.

    Used as a leaf: the request path below its mount point is the script's path. Paths that
    are not scripts get a 404; :class:`pxetwist.http.service.HttpService` puts it in front of
    :class:`~pxetwist.http.static.BootFiles` with :meth:`claims` deciding which one answers.

    :param context: the server context: the config in force (HTTP and TFTP roots and ports,
        ``server_address``, operator templates, iPXE user classes), the policy chain, the
        sightings (who DHCP saw where), the reactor (for the file fallback), and the served
        interfaces (so a request records which one it came in on).
    :param renderer: renders the configs; default one with the config's ``templates``.
    """

    isLeaf = True

    def __init__(self, context: ServerContext, *, renderer: Renderer | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._server = context
        self._configs = BootConfigResolver(context, renderer)

    @property
    def _root(self) -> Path:
        return Path(self._server.config.http.root).resolve()

    def claims(self, request: Request) -> ScriptName | None:
        """The script this request asks for, or None if it is for something else."""
        typed = cast(_ScriptRequest, request)
        return script_name(typed.postpath or [], ipv4_host(typed.getClientAddress()))

    def render(self, request: Request) -> int:
        name = self.claims(request)
        if name is None:
            return _respond(cast(_ScriptRequest, request), 404, "Not Found")
        return self.serve(request, name)

    def serve(self, request: Request, name: ScriptName) -> int:
        """Answer *request* with the config *name* for the machine asking; ``NOT_DONE_YET``."""
        typed = cast(_ScriptRequest, request)
        if typed.method not in (b"GET", b"HEAD"):
            return _respond(typed, 405, "Method Not Allowed", [(b"Allow", b"GET, HEAD")])
        client = ipv4_host(typed.getClientAddress())
        try:
            query = _parse_query(typed.args or {})
        except _BadQuery as error:
            _note(request, why=str(error))
            return _respond(typed, 400, f"Bad Request: {error}")
        context = self._context(typed, name.kind)
        ask = ConfigAsk(
            kind=name.kind,
            path=name.path,
            stage=Stage.HTTP,
            client=client,
            serving=context,
            interface=self._server.interface_named_by(IPv4Address(context.server)),
            mac=name.mac or query.mac,
            arch=query.arch,
            uuid=query.uuid,
            may_chain=self._may_chain,
        )
        boot_request = self._configs.identify(ask)
        if boot_request is None:
            why = (
                f"cannot tell which machine {client} is: DHCP has not seen it and the URL "
                "has no mac= (iPXE: ?mac=${mac})"
            )
            _note(request, why=why)
            return _respond(typed, 404, f"Not Found: {why}")
        setattr(request, MAC_ATTRIBUTE, boot_request.mac)
        gone: list[bool] = []
        typed.notifyFinish().addErrback(lambda _: gone.append(True))
        answered: Deferred[BootConfig] = self._configs.answer(ask, boot_request)

        def answer(config: BootConfig) -> None:
            if not gone:
                self._answer(request, name, config)

        def failed(failure: Failure) -> None:
            _log.failure(
                "http: answering {path} for {mac} failed",
                failure=failure,
                path=name.path,
                mac=str(boot_request.mac),
            )
            if not gone and not typed.startedWriting:
                _respond(typed, 500, "Internal Server Error: see the server log")

        answered.addCallback(answer).addErrback(failed)
        return NOT_DONE_YET

    # -- identifying the machine ---------------------------------------------------------------

    def _context(self, request: _ScriptRequest, kind: LoaderKind) -> ServingContext:
        """Where this client reached us (the address and port it connected to) and what the
        config may point it at: :func:`~pxetwist.policy.render.serving_context`."""
        host = request.getHost()
        return serving_context(
            self._server.config,
            ipv4_host(host) or IPv4Address("0.0.0.0"),
            http_port=getattr(host, "port", None),
            over_http=kind,
        )

    # -- answering -----------------------------------------------------------------------------

    def _answer(self, request: Request, name: ScriptName, config: BootConfig) -> None:
        typed = cast(_ScriptRequest, request)
        mac = str(config.mac)
        decision = config.decision
        if config.status is ConfigStatus.UNDECIDED or decision is None:
            why = f"no boot policy decided for {mac}"
            _note(request, why=why)
            _respond(typed, 404, f"Not Found: {why}")
            return
        if config.status is ConfigStatus.IGNORED:
            why = f"{mac} is ignored by policy {decision.policy}: {decision.reason}"
            _note(request, why=why, policy=decision.policy, action=decision.action.value)
            _respond(typed, 404, f"Not Found: {why}")
            return
        if config.status is ConfigStatus.NOTHING:
            self._nothing_to_run(request, name, mac, decision)
            return
        if config.status is ConfigStatus.FAILED:
            error = config.error
            assert error is not None
            _log.error(
                "http: cannot render {path} for {mac} with template {template}: {error}",
                path=name.path,
                mac=mac,
                template=error.filename or error.template,
                line=error.line,
                error=str(error),
            )
            _respond(typed, 500, f"Internal Server Error: cannot render {error.template}")
            return
        assert config.text is not None
        body = config.text.encode("utf-8")
        typed.setResponseCode(200)
        headers = typed.responseHeaders
        headers.setRawHeaders(b"Content-Type", [_TEXT])
        headers.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        headers.setRawHeaders(b"Cache-Control", [b"no-store"])
        setattr(request, GENERATED_ATTRIBUTE, True)
        _note(
            request,
            loader=name.kind.value,
            policy=decision.policy,
            action=decision.action.value,
            reason=decision.reason,
        )
        typed.write(body)  # twisted.web drops the body itself for HEAD
        typed.finish()

    def _may_chain(self, program: str, context: ServingContext) -> bool:
        """iPXE may chain to *program* unless that is one of our own iPXE scripts (a loop)."""
        return not self._is_own_script(program, context)

    def _is_own_script(self, program: str, context: ServingContext) -> bool:
        """Whether iPXE chaining to *program* would fetch one of our own iPXE scripts again.

        That is the ``ipxe`` boot entry itself (``http://{server}:{http_port}/boot.ipxe?...``),
        which is what an iPXE client gets from a policy that names no kernel for it.
        """
        try:
            location = ipxe_location(program, context)
        except ValueError:
            return False  # rendering will report it
        parts = urlsplit(location)
        if parts.scheme.lower() != "http" or parts.hostname != context.server:
            return False
        try:
            port = parts.port or 80
        except ValueError:
            return False
        if port != context.http_port:
            return False
        segments = [s.encode("utf-8") for s in parts.path.split("/")]
        named = script_name(segments, None)
        return named is not None and named.kind is LoaderKind.IPXE

    def _nothing_to_run(
        self, request: Request, name: ScriptName, mac: str, decision: BootDecision
    ) -> None:
        """The decision names nothing this loader can run: the operator's file of that name if
        there is one, else a 404 that says so."""
        typed = cast(_ScriptRequest, request)
        try:
            path = resolve_path(self._root, [part.encode("utf-8") for part in name.path.split("/")])
        except PathRefused:
            what = "kernel or script" if name.kind is LoaderKind.IPXE else "kernel"
            why = (
                f"the decision for {mac} ({decision.policy}: {decision.reason}) names no "
                f"{what} for {name.kind.value}, and there is no file {name.path}"
            )
            _note(request, why=why, policy=decision.policy, action=decision.action.value)
            _respond(typed, 404, f"Not Found: {why}")
            return
        why = f"the file: the decision names nothing for {name.kind.value}"
        _note(request, why=why, policy=decision.policy, action=decision.action.value)
        serve_file(request, path, self._server.reactor)


def _note(request: object, **details: str | None) -> None:
    """What the response's boot event says besides the HTTP facts (:data:`NOTE_ATTRIBUTE`)."""
    setattr(request, NOTE_ATTRIBUTE, {k: v for k, v in details.items() if v is not None})


def _respond(
    request: _ScriptRequest,
    code: int,
    text: str,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> int:
    """A complete short plain-text response with an exact length."""
    body = (text + "\n").encode("utf-8")
    request.setResponseCode(code)
    headers = request.responseHeaders
    headers.setRawHeaders(b"Content-Type", [_TEXT])
    headers.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    headers.setRawHeaders(b"Cache-Control", [b"no-store"])
    for field, value in extra:
        headers.setRawHeaders(field, [value])
    request.write(body)
    request.finish()
    return NOT_DONE_YET
