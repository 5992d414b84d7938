#!/usr/bin/env bash
# Make a Debian bookworm base image with Python 3.11 from the Debian package mirror, for hosts
# that cannot pull images from Docker Hub. The images then build on it:
#
#   deploy/local-base.sh                 # makes maskx/debian-python:bookworm unless it exists
#   deploy/local-base.sh --force         # makes it again
#   docker build --build-arg PYTHON_IMAGE=maskx/debian-python:bookworm --target serve-cpu .
#
# Needs root (debootstrap), debootstrap and a running Docker engine. Settings (environment):
#   MASKX_LOCAL_BASE   image name (default maskx/debian-python:bookworm)
#   DEBIAN_MIRROR      Debian mirror (default http://deb.debian.org/debian)
#   MASKX_CA_BUNDLE    CA bundle copied into the image as its system-wide bundle (default: this
#                      host's /etc/ssl/certs/ca-certificates.crt, which holds any TLS-intercepting
#                      proxy's certificate the host trusts; pip in the image then trusts it too)
set -euo pipefail

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
}

force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "local-base.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

name="${MASKX_LOCAL_BASE:-maskx/debian-python:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ca_bundle="${MASKX_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

for tool in docker debootstrap tar; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "local-base.sh: '$tool' is required but not installed (apt-get install -y docker.io debootstrap)" >&2
        exit 1
    fi
done
if [[ "$(id -u)" != 0 ]]; then
    echo "local-base.sh: debootstrap needs root; run it with sudo" >&2
    exit 1
fi
if [[ ! -r "$ca_bundle" ]]; then
    echo "local-base.sh: CA bundle $ca_bundle not readable (MASKX_CA_BUNDLE)" >&2
    exit 1
fi
if [[ "$force" == 0 ]] && docker image inspect "$name" >/dev/null 2>&1; then
    echo "local-base.sh: $name exists (--force to make it again)"
    exit 0
fi

rootfs="$(mktemp -d)"
cleanup() {
    # debootstrap mounts /proc (and more) inside the tree while it works; never delete through a
    # mount point that a failed run left behind.
    local mnt
    awk -v root="$rootfs" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r |
        while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
    rm -rf --one-file-system "$rootfs" "$rootfs.log"
}
trap cleanup EXIT
start=$SECONDS
echo "== debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -20 "$rootfs.log" >&2
    exit 1
}
# The host's bundle replaces Debian's: it is a superset on a Debian host, and on a host behind a
# TLS-intercepting proxy it is the only one that lets pip in a container reach the package index.
# A copy among the local certificates keeps it in the bundle when a build runs
# update-ca-certificates, which rebuilds the bundle from Debian's list and that folder.
cp "$ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"
cp "$ca_bundle" "$rootfs/usr/local/share/ca-certificates/host-ca-bundle.crt"
chmod 0644 "$rootfs/etc/ssl/certs/ca-certificates.crt" \
    "$rootfs/usr/local/share/ca-certificates/host-ca-bundle.crt"
# Debian's python3 has no `python` alias; the Dockerfile's stages call python3 or the venv's.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
echo "== docker import $name"
tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$name" >/dev/null
echo "local-base.sh: made $name in $((SECONDS - start)) s"
