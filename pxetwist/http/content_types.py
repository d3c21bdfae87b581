"""Content-Type of a boot file, from its name: the table UEFI HTTP Boot and boot loaders need."""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["DEFAULT_CONTENT_TYPES", "content_type_for"]

DEFAULT_CONTENT_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        # UEFI HTTP Boot decides what to do with a download from these three (UEFI spec, "HTTP
        # Boot"; EDK2 HttpBootSupport.c); anything else and it refuses the image.
        ".efi": "application/efi",
        ".iso": "application/vnd.efi-iso",
        ".img": "application/vnd.efi-img",
        # Compressed initrds and archives: never Content-Encoding, or clients would decompress them.
        ".gz": "application/gzip",
        ".xz": "application/x-xz",
        ".zst": "application/zstd",
        ".lz4": "application/x-lz4",
        ".lzma": "application/x-lzma",
        ".bz2": "application/x-bzip2",
        ".cpio": "application/x-cpio",
        ".tar": "application/x-tar",
        # Scripts and configs that iPXE, GRUB and installers read as text.
        ".ipxe": "text/plain; charset=utf-8",
        ".cfg": "text/plain; charset=utf-8",
        ".conf": "text/plain; charset=utf-8",
        ".txt": "text/plain; charset=utf-8",
        ".ks": "text/plain; charset=utf-8",
        ".seed": "text/plain; charset=utf-8",
        ".json": "application/json",
        ".yaml": "application/yaml",
        ".yml": "application/yaml",
    }
)
"""File-name suffix (lower case, with the dot) to ``Content-Type``. Kernels have no suffix and get
``application/octet-stream``, as do ``.0``, ``.kpxe`` and anything not listed. Note that ``.img``
means a disk image to UEFI, so a Debian-style ``initrd.img`` is labelled as one too; iPXE and GRUB
ignore the type."""

_DEFAULT_TYPE: Final = "application/octet-stream"


def content_type_for(name: str, table: Mapping[str, str] = DEFAULT_CONTENT_TYPES) -> str:
    """The ``Content-Type`` for a file called *name*, from its last suffix, case-insensitively.

    Case matters because the ESP convention is upper case (``BOOTX64.EFI``), and UEFI would refuse
    that file as ``application/octet-stream``.
    """
    suffix = os.path.splitext(name)[1].lower()
    return table.get(suffix, _DEFAULT_TYPE)
