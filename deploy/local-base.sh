#!/usr/bin/env bash
# Make a Debian bookworm base image with Python 3.11 from the Debian package mirror, for hosts
# that cannot pull images from Docker Hub. The images then build on it:
#
#   deploy/local-base.sh                 # makes maskx/debian-python:bookworm unless it exists
#   deploy/local-base.sh --force         # makes it again
#   deploy/local-base.sh --print-mirror  # prints the Debian mirror it would use, and exits
#   docker build --build-arg PYTHON_IMAGE=maskx/debian-python:bookworm --target serve-cpu .
#
# Needs root (debootstrap), debootstrap and a running Docker engine. Settings (environment):
#   MASKX_LOCAL_BASE   image name (default maskx/debian-python:bookworm)
#   DEBIAN_MIRROR      Debian mirror (default: the one this machine's apt sources use for
#                      bookworm, read from APT_DIR/sources.list and sources.list.d/)
#   APT_DIR            where the apt sources are (default /etc/apt)
#   MASKX_CA_BUNDLE    CA bundle copied into the image as its system-wide bundle (default: this
#                      host's /etc/ssl/certs/ca-certificates.crt, which holds any TLS-intercepting
#                      proxy's certificate the host trusts; pip in the image then trusts it too)
set -euo pipefail

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
}

suite=bookworm

# The URI of the first enabled `deb` source for $suite itself (not -updates or -security) in the
# machine's apt sources, one-line (*.list) or deb822 (*.sources) format. No host is written in
# this script: the machine knows which mirror it may reach (as pip's index comes from build args).
apt_mirror() {
    local dir="${APT_DIR:-/etc/apt}" f
    local files=()
    [[ -f "$dir/sources.list" ]] && files+=("$dir/sources.list")
    for f in "$dir"/sources.list.d/*.list "$dir"/sources.list.d/*.sources; do
        [[ -f "$f" ]] && files+=("$f")
    done
    [[ ${#files[@]} -gt 0 ]] || return 1
    awk -v suite="$suite" '
        function flush() {
            if (types ~ /(^| )deb( |$)/ && enabled && uris != "" && (" " suites " ") ~ (" " suite " ")) {
                split(uris, u, " "); print u[1]; found = 1; exit
            }
            types = ""; uris = ""; suites = ""; enabled = 1
        }
        BEGIN { enabled = 1 }
        FNR == 1 { flush() }
        /^[ \t]*#/ { next }
        FILENAME ~ /\.sources$/ {
            if ($0 ~ /^[ \t]*$/) { flush(); next }
            key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
            if (key == "types") types = $0
            else if (key == "uris") uris = $0
            else if (key == "suites") suites = $0
            else if (key == "enabled") enabled = (tolower($0) != "no")
            next
        }
        $1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == suite) { print $i; found = 1; exit }
        }
        END { if (!found) flush(); }
    ' "${files[@]}" | head -n 1 | grep .
}

force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --print-mirror)
            if [[ -n "${DEBIAN_MIRROR:-}" ]]; then echo "$DEBIAN_MIRROR"; exit 0; fi
            apt_mirror || { echo "local-base.sh: no apt source for $suite in ${APT_DIR:-/etc/apt}; set DEBIAN_MIRROR" >&2; exit 1; }
            exit 0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "local-base.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

name="${MASKX_LOCAL_BASE:-maskx/debian-python:bookworm}"
mirror="${DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]] && ! mirror="$(apt_mirror)"; then
    echo "local-base.sh: this machine's apt sources (${APT_DIR:-/etc/apt}) name no mirror for $suite; set DEBIAN_MIRROR to a Debian mirror's URL" >&2
    exit 1
fi
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
echo "== debootstrap $suite from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
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
