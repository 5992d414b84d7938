#!/usr/bin/env bash
# Make sure a Docker engine answers, for the image tests (`make test`, `make test-docker`):
#
#   deploy/docker-engine.sh          # start dockerd if none answers (as root), wait for it
#
# When `docker info` already works, nothing happens. Otherwise, as root with dockerd installed
# (Debian: apt-get install -y docker.io), it starts `dockerd` in the background at low CPU
# priority (nice 15: image builds must not starve other work on a small machine), logging to
# /var/log/dockerd.log, and waits up to 60 s for it. Exit status 0 when an engine answers;
# otherwise 1 with one line saying why no engine can run here (the tests print it as their
# reason to skip).
set -euo pipefail

if ! command -v docker >/dev/null 2>&1; then
    echo "no Docker client (apt-get install -y docker.io)"
    exit 1
fi
if docker info >/dev/null 2>&1; then
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "no Docker engine answers and dockerd is not installed (apt-get install -y docker.io)"
    exit 1
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "no Docker engine answers, and starting dockerd needs root (sudo $0)"
    exit 1
fi
log=/var/log/dockerd.log
echo "starting dockerd (log: $log)" >&2
nohup nice -n 15 dockerd >>"$log" 2>&1 </dev/null &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        exit 0
    fi
    sleep 1
done
echo "dockerd did not answer within 60 s: $(tail -n 3 "$log" | tr '\n' ' ')"
exit 1
