"""A diskless machine for the end-to-end suite: an initrd that mounts its root over NFS.

Debian's kernel has NFS and virtio-net only as modules (nfs-notes, "Client: initrd with the
Debian kernel"), so the initrd made here carries them: the ``.ko`` files come from the
``linux-image-<release>`` package of exactly the boot tree's kernel (fetched once with
``apt-get download`` into the boot-tree cache, unpacked with ``dpkg-deb``), their load order
worked out from each module's ``depends=``.  Its ``/init``:

1. loads the modules, brings ``eth0`` up and gets an address with busybox ``udhcpc``;
2. with ``pxetwist.probe=SERVER:/PSEUDO`` words on the command line it only tries to mount each
   one and prints ``NFSPROBE-MOUNTED`` or ``NFSPROBE-REFUSED`` (a machine trying another's
   exports), then powers off;
3. otherwise mounts ``nfsroot=SERVER:/PSEUDO`` (NFSv4.1, ``addr=`` given: busybox has no NFS
   mount helper, the kernel parses the options) and ``switch_root``\\s into it.

:func:`populate_root` fills a directory with what that root needs: static busybox and a
``/sbin/init`` that, as PID 1 from the export, prints ``NFSROOT-PID1 pid=1``, writes
``/written-by-machine`` (which must land on the server), mounts ``pxetwist.ro=`` and reads it,
tries to write to it (which must be refused), and powers off.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

from .boottree import (
    BUSYBOX_CANDIDATES,
    MissingInput,
    _cache_root,
    _cpio_entry,
    _is_static_elf,
)

__all__ = [
    "MODULES",
    "kernel_release",
    "module_order",
    "nfsroot_initrd",
    "populate_root",
]

RECIPE = "pxetwist-nfsroot-v2"
#: What the initrd must be able to do: the virtio NIC, and NFSv3/v4 client.
MODULES = ("virtio_pci", "virtio_net", "nfsv4", "nfsv3")
APT_TIMEOUT = 900.0

PROBE_MARK = "NFSPROBE"
PID1_MARK = "NFSROOT-PID1"

INIT = r"""#!/bin/sh
# pxetwist e2e: mount the root file system over NFS, then switch to it.
export PATH=/bin
busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
out=/dev/console
[ -c /dev/ttyS0 ] && out=/dev/ttyS0
say() { busybox printf '\n%s\n' "$*" > "$out"; }
halt() { say "NFSROOT-INITRD $*"; busybox sync; busybox poweroff -f; exit 1; }
for m in $(busybox cat /lib/modules/order); do
    busybox insmod "/lib/modules/$m.ko" || say "NFSROOT-INITRD insmod $m failed"
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do busybox sleep 0.1; i=$((i + 1)); done
busybox ip link set lo up
busybox ip link set eth0 up || halt "no eth0"
busybox udhcpc -i eth0 -n -q -f -t 10 -T 2 -s /bin/udhcpc.sh || halt "no DHCP lease"
nfsroot=""
probes=""
for word in $(busybox cat /proc/cmdline); do
    case "$word" in
        nfsroot=*) nfsroot="${word#nfsroot=}" ;;
        pxetwist.probe=*) probes="$probes ${word#pxetwist.probe=}" ;;
    esac
done
if [ -n "$probes" ]; then
    busybox mkdir -p /probe
    for target in $probes; do
        if busybox mount -t nfs -o "vers=4.1,addr=${target%%:*}" "$target" /probe 2>/dev/null
        then
            say "NFSPROBE-MOUNTED $target"
            busybox umount /probe
        else
            say "NFSPROBE-REFUSED $target"
        fi
    done
    halt "probe done"
fi
[ -n "$nfsroot" ] || halt "no nfsroot= on the command line"
busybox mkdir -p /newroot
busybox mount -t nfs -o "vers=4.1,addr=${nfsroot%%:*}" "$nfsroot" /newroot \
    || halt "cannot mount $nfsroot"
say "NFSROOT-INITRD mounted $nfsroot"
[ -x /newroot/sbin/init ] || halt "no /sbin/init on $nfsroot"
busybox mount -o move /dev /newroot/dev
busybox umount /sys
busybox umount /proc
exec busybox switch_root /newroot /sbin/init
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
    bound|renew)
        busybox ip addr flush dev "$interface"
        busybox ip addr add "$ip/${mask:-24}" dev "$interface"
        ;;
esac
exit 0
"""

ROOT_INIT = r"""#!/bin/busybox sh
# pxetwist e2e: PID 1 of a diskless machine, read from its NFS root.
export PATH=/bin
busybox mount -t proc proc /proc
out=/dev/console
[ -c /dev/ttyS0 ] && out=/dev/ttyS0
say() { busybox printf '\n%s\n' "$*" > "$out"; }
root=$(busybox awk '$2 == "/" { print $3 " " $1 }' /proc/mounts | busybox tail -n 1)
say "NFSROOT-PID1 pid=$$ root=[$root]"
token=""
ro=""
for word in $(busybox cat /proc/cmdline); do
    case "$word" in
        pxetwist.token=*) token="${word#pxetwist.token=}" ;;
        pxetwist.ro=*) ro="${word#pxetwist.ro=}" ;;
    esac
done
if echo "$token" > /written-by-machine && busybox sync; then
    say "NFSROOT-WRITE ok"
else
    say "NFSROOT-WRITE failed"
fi
if [ -n "$ro" ] && busybox mount -t nfs -o "vers=4.1,addr=${ro%%:*}" "$ro" /mnt/ro; then
    say "NFSROOT-RO-READ [$(busybox cat /mnt/ro/release)]"
    if echo "$token" > /mnt/ro/written-by-machine 2>/dev/null; then
        say "NFSROOT-RO-WRITE succeeded"
    else
        say "NFSROOT-RO-WRITE refused"
    fi
else
    say "NFSROOT-RO-READ mount failed"
fi
say "NFSROOT-DONE"
busybox sync
busybox poweroff -f
"""


def kernel_release(kernel: Path) -> tuple[str, str]:
    """``(release, Debian version)`` of a bzImage, e.g. ``("6.1.0-50-amd64", "6.1.176-1")``.

    The x86 boot header holds a pointer (at 0x20E) to the version string, 0x200 bytes on.
    """
    data = kernel.read_bytes()
    if data[0x202:0x206] != b"HdrS":
        raise MissingInput(f"{kernel} is not a bzImage")
    (offset,) = struct.unpack_from("<H", data, 0x20E)
    text = data[offset + 0x200 : offset + 0x400].split(b"\0", 1)[0].decode(errors="replace")
    match = re.match(r"(\S+) .*Debian (\S+)", text)
    if match is None:
        raise MissingInput(f"{kernel}: cannot read the Debian kernel version from {text!r}")
    return match.group(1), match.group(2)


def _depends(module: Path) -> list[str]:
    for item in module.read_bytes().split(b"\0"):
        if item.startswith(b"depends="):
            return [name for name in item[8:].decode().split(",") if name]
    return []


def module_order(tree: Path, wanted: tuple[str, ...] = MODULES) -> list[Path]:
    """Every module ``wanted`` needs, dependencies first (from each ``.ko``'s ``depends=``)."""
    found = {path.name.removesuffix(".ko"): path for path in tree.rglob("*.ko")}
    order: list[Path] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in chain:
            raise MissingInput(f"module dependency loop: {' -> '.join((*chain, name))}")
        if name not in found:
            raise MissingInput(f"module {name} is not in the kernel package")
        for dependency in _depends(found[name]):
            visit(dependency, (*chain, name))
        done.add(name)
        order.append(found[name])

    for name in wanted:
        visit(name, ())
    return order


def _busybox() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        if candidate.exists() and _is_static_elf(candidate):
            return candidate
    raise MissingInput("a static busybox is needed: apt-get install busybox-static")


def _module_deb(release: str, version: str, cache: Path) -> Path:
    name = f"linux-image-{release}_{version}_amd64.deb"
    deb = cache / "debs" / name
    if deb.exists():
        return deb
    deb.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["apt-get", "download", f"linux-image-{release}={version}"],
        cwd=deb.parent,
        capture_output=True,
        text=True,
        timeout=APT_TIMEOUT,
        check=False,
    )
    if result.returncode != 0 or not deb.exists():
        raise MissingInput(
            f"cannot fetch linux-image-{release}={version} (its NFS modules): "
            f"{result.stderr.strip()[-300:]}"
        )
    return deb


def _archive(entries: list[tuple[str, int, bytes]]) -> bytes:
    dirs: set[str] = {"dev", "proc", "sys", "newroot"}
    for name, _mode, _data in entries:
        parent = Path(name).parent
        while str(parent) != ".":
            dirs.add(str(parent))
            parent = parent.parent
    records = [(d, stat.S_IFDIR | 0o755, b"", 0) for d in dirs]
    records += [(name, mode, data, 0) for name, mode, data in entries]
    records.append(("dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1)))
    records.sort(key=lambda record: record[0])
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate(records, 1):
        out += _cpio_entry(name, mode, data, ino, rdev)
    out += _cpio_entry("TRAILER!!!", 0)
    return gzip.compress(bytes(out), compresslevel=6, mtime=0)


def nfsroot_initrd(kernel: Path, cache: Path | None = None) -> Path:
    """The NFS-root initrd for ``kernel`` (built once, kept in the boot-tree cache)."""
    cache = cache if cache is not None else _cache_root()
    release, version = kernel_release(kernel)
    busybox = _busybox()
    key = hashlib.sha256(
        f"{RECIPE}\0{release}\0{version}\0{INIT}\0{UDHCPC_SCRIPT}".encode()
        + hashlib.sha256(busybox.read_bytes()).digest()
    ).hexdigest()[:20]
    target = cache / f"nfsroot-{key}.img"
    if target.exists():
        return target
    deb = _module_deb(release, version, cache)
    with tempfile.TemporaryDirectory(prefix="pxetwist-kmod-") as unpacked:
        subprocess.run(
            ["dpkg-deb", "-x", str(deb), unpacked], check=True, timeout=300, capture_output=True
        )
        modules = module_order(Path(unpacked) / "lib" / "modules" / release)
        entries = [
            ("init", stat.S_IFREG | 0o755, INIT.encode()),
            ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
            ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
            ("bin/udhcpc.sh", stat.S_IFREG | 0o755, UDHCPC_SCRIPT.encode()),
            (
                "lib/modules/order",
                stat.S_IFREG | 0o644,
                "".join(m.name.removesuffix(".ko") + "\n" for m in modules).encode(),
            ),
        ]
        entries += [
            (f"lib/modules/{m.name}", stat.S_IFREG | 0o644, m.read_bytes()) for m in modules
        ]
        data = _archive(entries)
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


def populate_root(root: Path) -> None:
    """Make ``root`` a minimal root file system whose ``/sbin/init`` is :data:`ROOT_INIT`."""
    for directory in ("bin", "sbin", "dev", "proc", "sys", "tmp", "mnt/ro"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_busybox(), root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    init = root / "sbin" / "init"
    init.write_text(ROOT_INIT)
    init.chmod(0o755)
