#!/usr/bin/env bash
# Set up pxetwist on a fresh Debian 12 machine (run as root): the Debian packages it needs, a
# virtualenv in .venv with pxetwist installed (editable) and, for serving, /srv/pxetwist with
# iPXE boot programs from Debian's ipxe package.  Safe to run again: it only adds what is missing.
#
#   scripts/setup.sh          packages + venv + boot tree for `twistd pxe` with etc/pxe.yaml
#   scripts/setup.sh --test   packages + venv for the whole test suite (real clients, QEMU)
#   scripts/setup.sh --bench  as --test, plus tftpd-hpa unpacked for the benchmarks
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-serve}

SERVE_PKGS=(python3-venv python3-pip ipxe iproute2
  nfs-ganesha nfs-ganesha-vfs rpcbind dbus util-linux)  # diskless machines (nfs:)
TEST_PKGS=(
  iproute2 procps tcpdump                                 # lab plumbing
  busybox-static udhcpc isc-dhcp-client dhcpcd-base       # real DHCP clients (static busybox: e2e initrd)
  curl tftp-hpa atftp atftpd                              # real TFTP/HTTP clients, atftpd reference
  dnsmasq-base kea-dhcp4-server kea-admin kea-common nginx  # reference servers, perfdhcp
  postgresql-15                                           # shared lease database (throw-away clusters)
  qemu-system-x86 ipxe-qemu seabios ovmf                  # real firmware
  qemu-system-arm qemu-efi-aarch64 u-boot-qemu            # ARM64 firmware: AAVMF, U-Boot
  ipxe pxelinux syslinux-common grub-efi-amd64-signed shim-signed
  debian-installer-12-netboot-amd64 debian-installer-12-netboot-arm64
  nfs-ganesha nfs-ganesha-vfs rpcbind dbus libnfs-utils  # NFS lab: Ganesha, libnfs clients
  chromium chromium-driver                                # the dashboard's browser test (selenium)
)

missing_packages() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            echo "$pkg"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# The ARM64 e2e tree fetches two arm64 packages at test time (`apt-get download
# grub-efi-arm64-signed:arm64 busybox-static:arm64`, unpacked, never installed): apt needs the
# arm64 package lists for that.
enable_arm64_lists() {
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        echo "setup: adding the arm64 architecture to apt (for apt-get download pkg:arm64)"
        dpkg --add-architecture arm64
        DEBIAN_FRONTEND=noninteractive apt-get update -q
    fi
}

case "$mode" in
    serve) install_packages "${SERVE_PKGS[@]}" ;;
    --test|--bench)
        install_packages "${SERVE_PKGS[@]}" "${TEST_PKGS[@]}"
        enable_arm64_lists
        ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
esac

# The interpreter: Debian's own python3 unless PYTHON names another (scripts/python.sh says
# why).  A venv made from another interpreter than the one wanted is made again.
PYTHON=$(scripts/python.sh)
base=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')
if [ -x .venv/bin/python ] &&
    [ "$(.venv/bin/python -c 'import os, sys; print(os.path.realpath(sys._base_executable))')" != "$base" ]; then
    echo "setup: .venv was made from another interpreter; making it again from $base"
    rm -rf .venv
fi

# The virtualenv: editable in compat mode, so the checkout's twisted/plugins dropins are on
# sys.path and `twistd pxe` sees edits without reinstalling.
stamp=.venv/.pxetwist-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/pip install -q --upgrade pip 'setuptools>=68' wheel
    .venv/bin/pip install -q -e '.[test,dev]' --config-settings editable_mode=compat
    echo "$want" > "$stamp"
fi

if [ "$mode" = serve ]; then
    # The example config serves /srv/pxetwist; give it the iPXE builds Debian ships.
    mkdir -p /srv/pxetwist/tftp /srv/pxetwist/http /var/lib/pxetwist
    for file in undionly.kpxe ipxe.efi snponly.efi; do
        [ -e "/srv/pxetwist/tftp/$file" ] || cp "/usr/lib/ipxe/$file" /srv/pxetwist/tftp/
    done
    [ -e /srv/pxetwist/http/ipxe.efi ] || cp /usr/lib/ipxe/ipxe.efi /srv/pxetwist/http/
fi

if [ "$mode" = --bench ]; then
    # tftpd-hpa conflicts with atftpd (both ship in.tftpd): unpack it beside, do not install.
    HPA_DIR=${HPA_DIR:-/var/tmp/pxetwist/tftpd-hpa}
    if [ ! -x "$HPA_DIR/usr/sbin/in.tftpd" ]; then
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get download tftpd-hpa >/dev/null)
        mkdir -p "$HPA_DIR" && dpkg-deb -x "$tmp"/tftpd-hpa_*.deb "$HPA_DIR" && rm -rf "$tmp"
    fi
fi
echo "setup: ready (.venv)"
