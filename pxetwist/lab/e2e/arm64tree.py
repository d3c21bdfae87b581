"""The ARM64 boot tree: Debian's signed ARM64 GRUB, the ARM64 D-I kernel, an ARM64 initrd.

Built like the x86 tree (:mod:`pxetwist.lab.e2e.boottree`: cached by the hash of its inputs,
copied per test), from Debian packages::

    grubaa64.efi       grub-efi-arm64-signed:arm64 (grubnetaa64.efi.signed; prefix /grub,
                       so it reads TFTP grub/grub.cfg like grubnetx64)
    arm64/linux        debian-installer-12-netboot-arm64 (an "all" package: installed)
    arm64/initrd.img   made here: /init and a static ARM64 busybox (busybox-static:arm64)

The two ``:arm64`` packages cannot be installed on an amd64 machine without multiarch, so
they are fetched at build time with ``apt-get download pkg:arm64`` (it needs ``dpkg
--add-architecture arm64`` and ``apt-get update``, which ``scripts/setup.sh --test`` does)
into ``/var/tmp/pxetwist-debs`` and unpacked with ``dpkg-deb -x``; nothing is installed.
The initrd's ``/init`` prints its marker to ``ttyAMA0``, the virt machine's PL011.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .boottree import (
    BootTree,
    MissingInput,
    _is_static_elf,
    _sha256,
    cached_build,
    init_script,
    make_initrd,
)

__all__ = ["ARM64_DI_KERNEL", "DEB_CACHE_ENV", "arm64_missing_inputs", "cached_arm64_tree"]

RECIPE = "pxetwist-arm64tree-v1"
DEB_CACHE_ENV = "PXETWIST_DEB_CACHE"
DEFAULT_DEB_CACHE = Path("/var/tmp/pxetwist-debs")
ARM64_DI_KERNEL = Path(
    "/usr/lib/debian-installer/images/12/arm64/text/debian-installer/arm64/linux"
)
INIT = init_script("ttyAMA0")
APT_TIMEOUT = 300.0  # seconds for one `apt-get download`

# tree path -> (package:arch, path inside the package)
DEB_SOURCES: dict[str, tuple[str, str]] = {
    BootTree.GRUB_ARM64: (
        "grub-efi-arm64-signed:arm64",
        "usr/lib/grub/arm64-efi-signed/grubnetaa64.efi.signed",
    ),
}
BUSYBOX = ("busybox-static:arm64", "bin/busybox")


def _deb_cache() -> Path:
    return Path(os.environ.get(DEB_CACHE_ENV) or DEFAULT_DEB_CACHE)


def unpacked(package: str) -> Path:
    """The directory ``package`` (``name:arch``) is unpacked in, fetched first if need be."""
    name, _, arch = package.partition(":")
    cache = _deb_cache()
    target = cache / f"{name}_{arch}"
    if (target / ".complete").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache))
    try:
        try:
            subprocess.run(
                ["apt-get", "download", "-q", package],
                cwd=work,
                check=True,
                capture_output=True,
                text=True,
                timeout=APT_TIMEOUT,
            )
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            detail = getattr(e, "stderr", "") or str(e)
            raise MissingInput(
                f"cannot fetch {package} ({detail.strip()[-300:]}); run scripts/setup.sh "
                "--test (dpkg --add-architecture arm64 && apt-get update)"
            ) from None
        (deb,) = work.glob("*.deb")
        tree = work / "tree"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True, timeout=120)
        (tree / ".complete").write_text(deb.name + "\n")
        if target.exists():
            shutil.rmtree(target)
        with contextlib.suppress(OSError):  # lost a race: the winner's copy is as good
            tree.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def arm64_missing_inputs() -> list[str]:
    """Inputs that cannot be had without installing a package (the fetched ones are fetched)."""
    if not ARM64_DI_KERNEL.is_file():
        return [f"{ARM64_DI_KERNEL} (debian-installer-12-netboot-arm64)"]
    return []


def _inputs() -> tuple[dict[str, Path], Path]:
    missing = arm64_missing_inputs()
    if missing:
        raise MissingInput("ARM64 boot tree inputs not installed: " + ", ".join(missing))
    sources = {BootTree.ARM64_KERNEL: ARM64_DI_KERNEL}
    for rel, (package, inside) in DEB_SOURCES.items():
        sources[rel] = unpacked(package) / inside
    busybox = unpacked(BUSYBOX[0]) / BUSYBOX[1]
    if not _is_static_elf(busybox):
        raise MissingInput(f"{busybox} is not a static executable")
    return sources, busybox


def cached_arm64_tree() -> BootTree:
    """The shared, read-only ARM64 tree; built (and its packages fetched) if missing."""
    sources, busybox = _inputs()
    inputs = {rel: _sha256(path) for rel, path in sources.items()}
    inputs["initrd:bin/busybox"] = _sha256(busybox)
    digest = hashlib.sha256()
    for part in (RECIPE, INIT, json.dumps(inputs, sort_keys=True)):
        digest.update(part.encode())
    key = "arm64-" + digest.hexdigest()[:20]
    manifest: dict[str, object] = {"recipe": RECIPE, "inputs": inputs}

    def assemble(tmp: Path) -> dict[str, int]:
        for rel, path in sources.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        initrd = tmp / BootTree.ARM64_INITRD
        initrd.write_bytes(make_initrd([("bin/busybox", busybox)], INIT))
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        return {rel: (tmp / rel).stat().st_size for rel in BootTree(tmp, "arm64").files()}

    return cached_build(key, manifest, "arm64", assemble)
