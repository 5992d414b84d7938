#!/bin/sh
# `pip install --no-deps --require-hashes -r LOCK ...` with the package index named by the image
# build arguments PIP_INDEX, PIP_EXTRA_INDEX and PIP_TRUSTED_HOSTS (space-separated lists; empty
# ones are left out, so PyPI is the default). Used by every stage of the Dockerfile.
set -eu
set -- --no-deps --require-hashes "$@"
if [ -n "${PIP_INDEX:-}" ]; then
    set -- --index-url "$PIP_INDEX" "$@"
fi
for url in ${PIP_EXTRA_INDEX:-}; do
    set -- --extra-index-url "$url" "$@"
done
for host in ${PIP_TRUSTED_HOSTS:-}; do
    set -- --trusted-host "$host" "$@"
done
exec pip install "$@"
