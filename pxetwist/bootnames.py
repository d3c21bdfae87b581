"""Which file names are per-machine boot configs pxetwist writes itself, over TFTP or HTTP.

Both front ends of :mod:`pxetwist.bootconfig` (TFTP's :mod:`pxetwist.tftp.files` and HTTP's
:mod:`pxetwist.http.scripts`) read names with :func:`match_generated`, so a loader gets the same
answer for the same name whichever protocol it fetched it with.

Boot loaders look for their config under names derived from the machine (protocol-reference
§6.6: "dynamic files are fine"):

* PXELINUX asks, in order, ``pxelinux.cfg/<UUID>``, ``pxelinux.cfg/01-<mac>`` (dashed, lower
  case), the client's IPv4 address in upper-case hex and each of its prefixes
  (``C0A80001``, ``C0A8000``, ... ``C``), and finally ``pxelinux.cfg/default``; all of them
  relative to its path prefix, so ``bios/pxelinux.cfg/...`` is the same request from a
  ``pxelinux.0`` kept in ``bios/``.
* GRUB's network search asks ``grub.cfg-01-<mac>``, ``grub.cfg-<UUID>``, the hex address and its
  prefixes, then ``grub.cfg``, in its prefix directory (``grub/`` for Debian's netboot images).
  Sites also spell the MAC other ways (``grub.cfg-52:54:00:..``, ``grub.cfg-525400..``); any
  notation :class:`MacAddress` reads is accepted.
* iPXE scripts: any name ending in ``.ipxe``; a stem that is a MAC (``52-54-00-12-34-56.ipxe``)
  names the machine.

:func:`match_generated` is pure: it only classifies a normalised path.  When the name carries a
MAC, that is the machine; otherwise the caller identifies the client by its address.  A hex name
that is not a prefix of *this* client's address is not ours to generate (it is another
machine's file), and a UUID name is answered for whoever asks, identified by address.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address

import attrs

from pxetwist.policy.render import LoaderKind
from pxetwist.policy.values import InvalidMacAddress, MacAddress

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_HEX = re.compile(r"[0-9a-f]{1,8}", re.IGNORECASE)
_PXELINUX_MAC = re.compile(r"01-((?:[0-9a-f]{2}-){5}[0-9a-f]{2})", re.IGNORECASE)


@attrs.frozen
class GeneratedName:
    """A requested name that is a boot-loader config: which loader, and the MAC if it names one.

    ``directory`` is what came before ``pxelinux.cfg/`` (PXELINUX's path prefix); a non-empty
    one means paths in the config must be absolute on the TFTP server.
    """

    kind: LoaderKind
    mac: MacAddress | None = None
    directory: str = ""


def _mac(text: str) -> MacAddress | None:
    try:
        return MacAddress.parse(text)
    except InvalidMacAddress:
        return None


def _is_address_prefix(text: str, client: IPv4Address | None) -> bool:
    """Is ``text`` the client's address in hex, or a prefix of it (PXELINUX/GRUB fallbacks)?"""
    if client is None or not _HEX.fullmatch(text):
        return False
    return f"{int(client):08X}".startswith(text.upper())


def match_generated(path: str, client: IPv4Address | None) -> GeneratedName | None:
    """Classify a normalised request path (``a/b/c``); ``None`` means an ordinary file."""
    directory, _, base = path.rpartition("/")
    lower_base = base.lower()
    parent, _, parent_name = directory.rpartition("/")
    if parent_name.lower() == "pxelinux.cfg":
        return _pxelinux(base, lower_base, parent, client)
    if lower_base == "grub.cfg":
        return GeneratedName(LoaderKind.GRUB)
    if lower_base.startswith("grub.cfg-"):
        return _grub(base[len("grub.cfg-") :], client)
    if lower_base.endswith(".ipxe") and len(base) > len(".ipxe"):
        stem = base[: -len(".ipxe")]
        if stem.lower().startswith("01-") and _PXELINUX_MAC.fullmatch(stem):
            stem = stem[3:]
        return GeneratedName(LoaderKind.IPXE, _mac(stem))
    return None


def _pxelinux(
    base: str, lower_base: str, directory: str, client: IPv4Address | None
) -> GeneratedName | None:
    match = _PXELINUX_MAC.fullmatch(base)
    if match is not None:
        return GeneratedName(LoaderKind.PXELINUX, MacAddress.parse(match.group(1)), directory)
    if lower_base == "default" or _UUID.fullmatch(base) or _is_address_prefix(base, client):
        return GeneratedName(LoaderKind.PXELINUX, None, directory)
    return None


def _grub(suffix: str, client: IPv4Address | None) -> GeneratedName | None:
    if _UUID.fullmatch(suffix) or _is_address_prefix(suffix, client):
        return GeneratedName(LoaderKind.GRUB)
    if _PXELINUX_MAC.fullmatch(suffix):
        suffix = suffix[3:]
    mac = _mac(suffix)
    if mac is not None:
        return GeneratedName(LoaderKind.GRUB, mac)
    return None


__all__ = ["GeneratedName", "match_generated"]
