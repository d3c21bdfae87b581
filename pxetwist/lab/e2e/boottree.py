"""Build the end-to-end boot tree from Debian packages, at test time, with a cache.

The tree is never committed. It is assembled from installed Debian packages plus a tiny
initrd made here, cached under ``/var/tmp/pxetwist-boottree/<hash of inputs>`` (override
with ``$PXETWIST_BOOTTREE_CACHE``) and copied into each test's server root::

    undionly.kpxe  ipxe.efi  snponly.efi          ipxe, /usr/lib/ipxe
    pxelinux.0  ldlinux.c32                       pxelinux, syslinux-common
    shimx64.efi  bootx64.efi                      shim-signed (shimx64.efi.signed)
    grubx64.efi                                   grub-efi-amd64-signed (grubnetx64.efi.signed)
    boot/linux                                    debian-installer-12-netboot-amd64 kernel
    boot/initrd.img                               made here: static busybox + /init

Paths that matter to the firmware and loaders:

* Signed shim loads ``grubx64.efi`` from the directory it was itself loaded from; on EDK2
  PXE that is the TFTP root when shim is served as ``shimx64.efi``/``bootx64.efi``.
* ``grubnetx64.efi.signed`` has the prefix ``/grub`` on the boot server; its embedded
  config sources ``$prefix/x86_64-efi/grub.cfg`` if it exists, else ``$prefix/grub.cfg``.
  So GRUB's config is TFTP ``grub/grub.cfg`` (GRUB first probes, and misses,
  ``grub/x86_64-efi/grub.cfg``). All modules it needs are built in.
* pxelinux.0 needs ``ldlinux.c32`` next to it and then reads ``pxelinux.cfg/01-<mac>``.

The initrd's ``/init`` mounts /proc, prints one marker line with the whole kernel command
line to the serial port, and powers off. With ``panic=-1`` on the command line and QEMU's
``-no-reboot`` the VM also exits if init fails. The initrd carries no token: only the boot
server's configuration puts ``pxetwist.token=...`` on the command line, so seeing the
token in the marker proves the whole chain (DHCP → loader → config → kernel → initrd).

The D-I kernel is fine for this: the 8250 serial console, initramfs (gzip), devtmpfs,
ACPI power-off and the EFI stub are built in; it needs no module for this initrd.

The archive is written here in cpio ``newc`` format with a fixed mtime, so the initrd is
byte-for-byte reproducible and the cache key stays stable (no ``cpio`` binary is needed).
A static busybox (package busybox-static) is preferred; with a dynamic one (package
busybox) its ELF interpreter and libraries are copied in too.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BUSYBOX_CANDIDATES",
    "CACHE_ENV",
    "DI_KERNEL",
    "INIT_SCRIPT",
    "MARKER",
    "MARKER_RE",
    "SOURCES",
    "BootTree",
    "MissingInput",
    "build_tree",
    "cached_tree",
    "marker_cmdline",
    "missing_inputs",
]

RECIPE = "pxetwist-boottree-v1"  # bump when the layout or the initrd recipe changes
CACHE_ENV = "PXETWIST_BOOTTREE_CACHE"
DEFAULT_CACHE = Path("/var/tmp/pxetwist-boottree")
MANIFEST = "MANIFEST.json"

DI_KERNEL = Path("/usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64/linux")

# tree path -> (source file, Debian package that ships it)
SOURCES: dict[str, tuple[Path, str]] = {
    "undionly.kpxe": (Path("/usr/lib/ipxe/undionly.kpxe"), "ipxe"),
    "ipxe.efi": (Path("/usr/lib/ipxe/ipxe.efi"), "ipxe"),
    "snponly.efi": (Path("/usr/lib/ipxe/snponly.efi"), "ipxe"),
    "pxelinux.0": (Path("/usr/lib/PXELINUX/pxelinux.0"), "pxelinux"),
    "ldlinux.c32": (Path("/usr/lib/syslinux/modules/bios/ldlinux.c32"), "syslinux-common"),
    "shimx64.efi": (Path("/usr/lib/shim/shimx64.efi.signed"), "shim-signed"),
    "bootx64.efi": (Path("/usr/lib/shim/shimx64.efi.signed"), "shim-signed"),
    "grubx64.efi": (
        Path("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
        "grub-efi-amd64-signed",
    ),
    "boot/linux": (DI_KERNEL, "debian-installer-12-netboot-amd64"),
}
INITRD = "boot/initrd.img"
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))

MARKER = "PXETWIST-E2E-MARK"
# The marker line /init prints; group "cmdline" is /proc/cmdline verbatim.
MARKER_RE = re.compile(MARKER + r" cmdline=\[(?P<cmdline>[^\]\r\n]*)\]")


def init_script(serial: str = "ttyS0") -> str:
    """The initrd's ``/init``, printing its marker to ``/dev/<serial>`` (else the console).

    ``serial`` must be the machine's real UART: on ARM64 the 8250 driver still creates
    ``/dev/ttyS0`` nodes with no hardware behind them, so the ARM64 initrd names ``ttyAMA0``.
    """
    return f"""#!/bin/sh
# pxetwist e2e initrd: report the kernel command line that arrived, then power off.
export PATH=/bin
busybox mount -t proc proc /proc
busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
out=/dev/console
[ -c /dev/{serial} ] && out=/dev/{serial}
busybox printf '\\n{MARKER} cmdline=[%s]\\n' "$(busybox cat /proc/cmdline)" > "$out"
busybox sync
busybox poweroff -f
# poweroff failed: init exits, the kernel panics, panic=-1 reboots, -no-reboot ends QEMU
exit 1
"""


INIT_SCRIPT = init_script()


class MissingInput(RuntimeError):
    """An input file of the boot tree is not installed (the message names the package)."""


def marker_cmdline(serial_text: str) -> str | None:
    """The kernel command line reported by the initrd's marker line, if it is there."""
    m = MARKER_RE.search(serial_text)
    return None if m is None else m.group("cmdline")


@dataclass(frozen=True)
class BootTree:
    """A built boot tree (see the module docstring for its layout; ``platform`` ``arm64``:
    :mod:`pxetwist.lab.e2e.arm64tree`)."""

    root: Path
    platform: str = "x86"

    # well-known relative paths
    KERNEL = "boot/linux"
    INITRD = INITRD
    UNDIONLY = "undionly.kpxe"
    IPXE_EFI = "ipxe.efi"
    SNPONLY = "snponly.efi"
    PXELINUX = "pxelinux.0"
    SHIM = "shimx64.efi"
    GRUB = "grubx64.efi"
    ARM64_KERNEL = "arm64/linux"
    ARM64_INITRD = "arm64/initrd.img"
    GRUB_ARM64 = "grubaa64.efi"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def files(self) -> list[str]:
        """Relative paths of every file in the tree (the manifest)."""
        if self.platform == "arm64":
            return sorted([self.GRUB_ARM64, self.ARM64_KERNEL, self.ARM64_INITRD])
        return sorted([*SOURCES, INITRD])


# -- inputs and cache key ------------------------------------------------------------------


def _find_busybox() -> Path | None:
    for cand in BUSYBOX_CANDIDATES:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def missing_inputs() -> list[str]:
    """Human-readable list of missing inputs (``path (package)``); empty if all present."""
    missing = [f"{src} ({pkg})" for src, pkg in SOURCES.values() if not src.is_file()]
    if _find_busybox() is None:
        missing.append("busybox (busybox-static)")
    return sorted(set(missing))


def _is_static_elf(path: Path) -> bool:
    """True if the ELF64 file has no PT_INTERP program header (statically linked)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            raise MissingInput(f"{path} is not an ELF64 executable")
        endian = "<" if head[5] == 1 else ">"
        phoff = struct.unpack_from(endian + "Q", head, 0x20)[0]
        phentsize, phnum = struct.unpack_from(endian + "HH", head, 0x36)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack(endian + "I", f.read(4))
            if p_type == 3:  # PT_INTERP
                return False
    return True


def _shared_libs(binary: Path) -> list[Path]:
    """The interpreter and libraries ``ldd`` lists for a dynamic binary."""
    out = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    libs: list[Path] = []
    for line in out.splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _initrd_inputs() -> list[tuple[str, Path]]:
    """(path inside the initrd, host file) for busybox and, if dynamic, its libraries."""
    busybox = _find_busybox()
    if busybox is None:
        raise MissingInput("busybox not found: apt-get install busybox-static")
    files = [("bin/busybox", busybox)]
    if not _is_static_elf(busybox):
        files += [(str(lib).lstrip("/"), lib) for lib in _shared_libs(busybox)]
    return files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_key(initrd_files: list[tuple[str, Path]]) -> tuple[str, dict[str, str]]:
    """Hash of the recipe, /init and the content of every input file."""
    inputs = {rel: _sha256(src) for rel, (src, _pkg) in SOURCES.items()}
    for rel, src in initrd_files:
        inputs[f"initrd:{rel}"] = _sha256(src)
    h = hashlib.sha256()
    h.update(RECIPE.encode())
    h.update(INIT_SCRIPT.encode())
    h.update(json.dumps(inputs, sort_keys=True).encode())
    return h.hexdigest()[:20], inputs


# -- initrd ----------------------------------------------------------------------------------


def _cpio_entry(name: str, mode: int, data: bytes = b"", ino: int = 0, rdev: int = 0) -> bytes:
    """One cpio 'newc' record: uid/gid 0, mtime 0, nlink 1 (2 for directories)."""
    nb = name.encode() + b"\0"
    fields = (
        ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
        0, 0, os.major(rdev), os.minor(rdev), len(nb), 0,
    )  # fmt: skip
    head = b"070701" + b"".join(b"%08X" % v for v in fields) + nb
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def make_initrd(
    initrd_files: list[tuple[str, Path]] | None = None, init: str = INIT_SCRIPT
) -> bytes:
    """The gzip-compressed newc initramfs: /init, /bin/busybox (+ libs), /bin/sh, /dev/console."""
    files = _initrd_inputs() if initrd_files is None else initrd_files
    dirs = {"bin", "dev", "proc", "sys"}
    for rel, _src in files:
        parent = Path(rel).parent
        while str(parent) != ".":
            dirs.add(str(parent))
            parent = parent.parent
    entries: list[tuple[str, int, bytes, int]] = [(d, stat.S_IFDIR | 0o755, b"", 0) for d in dirs]
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1)))
    entries.append(("init", stat.S_IFREG | 0o755, init.encode(), 0))
    entries.append(("bin/sh", stat.S_IFLNK | 0o777, b"busybox", 0))
    for rel, src in files:
        entries.append((rel, stat.S_IFREG | 0o755, src.read_bytes(), 0))
    entries.sort(key=lambda e: e[0])  # parents before children
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate(entries, 1):
        out += _cpio_entry(name, mode, data, ino, rdev)
    out += _cpio_entry("TRAILER!!!", 0)
    return gzip.compress(bytes(out), compresslevel=9, mtime=0)


# -- build and cache -----------------------------------------------------------------------


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _complete(tree: Path, manifest: dict[str, object], platform: str = "x86") -> bool:
    """A cached tree is usable if its manifest matches and every file has the listed size."""
    try:
        on_disk = json.loads((tree / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if on_disk.get("inputs") != manifest["inputs"]:
        return False
    sizes = on_disk.get("sizes", {})
    if not isinstance(sizes, dict) or set(sizes) != set(BootTree(tree, platform).files()):
        return False
    for rel, size in sizes.items():
        try:
            if (tree / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _assemble(dest: Path, initrd_files: list[tuple[str, Path]]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for rel, (src, _pkg) in SOURCES.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        sizes[rel] = target.stat().st_size
    initrd = dest / INITRD
    initrd.write_bytes(make_initrd(initrd_files))
    sizes[INITRD] = initrd.stat().st_size
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return sizes


def cached_tree() -> BootTree:
    """The shared, read-only cached tree for the installed inputs; built if missing.

    Do not modify it: use :func:`build_tree` to get a private copy. Raises
    :class:`MissingInput` if a package is missing.
    """
    missing = missing_inputs()
    if missing:
        raise MissingInput("boot tree inputs not installed: " + ", ".join(missing))
    initrd_files = _initrd_inputs()
    key, inputs = _cache_key(initrd_files)
    manifest: dict[str, object] = {"recipe": RECIPE, "inputs": inputs}
    return cached_build(key, manifest, "x86", lambda tmp: _assemble(tmp, initrd_files))


def cached_build(
    key: str,
    manifest: dict[str, object],
    platform: str,
    assemble: Callable[[Path], dict[str, int]],
) -> BootTree:
    """The cached tree ``key`` if complete, else built by ``assemble`` (which fills a
    directory and returns each file's size) in a temporary directory renamed into place."""
    cache = _cache_root()
    tree = cache / key
    if _complete(tree, manifest, platform):
        return BootTree(tree, platform)
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o755)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache))
    try:
        manifest["sizes"] = assemble(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        (tmp / MANIFEST).chmod(0o644)
        if tree.exists():  # incomplete leftover of an interrupted run (or a racing builder)
            if _complete(tree, manifest, platform):
                return BootTree(tree, platform)
            shutil.rmtree(tree)
        with contextlib.suppress(OSError):  # lost a race: the winner's tree is as good
            tmp.rename(tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not _complete(tree, manifest, platform):
        raise RuntimeError(f"boot tree cache {tree} is incomplete after building it")
    return BootTree(tree, platform)


def build_tree(dest: Path | str, platform: str = "x86") -> BootTree:
    """Copy the (cached) boot tree into ``dest`` (created if needed) and return it.

    The copy is private: a test may add files (configs, scripts) to it. Files are plain
    copies, not symlinks, so servers that refuse symlinks leaving their root still work.
    ``platform`` ``arm64`` is the ARM64 tree (:mod:`pxetwist.lab.e2e.arm64tree`).
    """
    if platform == "arm64":
        from .arm64tree import cached_arm64_tree

        src = cached_arm64_tree()
    else:
        src = cached_tree()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in src.files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src.path(rel), target)
    for path in [dest, *dest.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    return BootTree(dest, src.platform)
