#!/usr/bin/env bash
# End-to-end smoke test of the compose stack, for a machine with Docker and Docker Compose v2.
#
#   deploy/smoke.sh            # GPU stack (docker-compose.yml)
#   deploy/smoke.sh --cpu      # CPU variant (docker-compose.yml + docker-compose.cpu.yml)
#   deploy/smoke.sh --down     # stop and remove the stack afterwards
#
# Steps: build and start the stack, wait until the worker is healthy and ready, POST a sample
# image to /segment and check the JSON answer, ask Prometheus's HTTP API for the worker's
# latency histogram, and print PASS or FAIL. The model comes from MASKX_MODEL_DIR (default
# ./artifacts/demo, holding model.onnx), as for `docker compose up`.
set -euo pipefail

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
}

cd "$(dirname "$0")/.."

files=(-f docker-compose.yml)
down=0
for arg in "$@"; do
    case "$arg" in
        --cpu) files+=(-f docker-compose.cpu.yml) ;;
        --down) down=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "smoke.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

http_port="${MASKX_HTTP_PORT:-8000}"
prom_port="${PROMETHEUS_PORT:-9090}"
worker="http://127.0.0.1:${http_port}"
prometheus="http://127.0.0.1:${prom_port}"
sample="${MASKX_SMOKE_IMAGE:-service/static/samples/synth-1.png}"
wait_s="${MASKX_SMOKE_WAIT_S:-300}"
model_dir="${MASKX_MODEL_DIR:-./artifacts/demo}"
model_file="${MASKX_MODEL_FILE:-model.onnx}"

failures=0
started=0
pass() { printf '  ok    %s\n' "$1"; }
fail() { printf '  FAIL  %s\n' "$1"; failures=$((failures + 1)); }

finish() {
    if [[ "$down" == 1 ]]; then
        docker compose "${files[@]}" down --remove-orphans >/dev/null 2>&1 || true
    fi
    if [[ "$failures" == 0 ]]; then
        echo "smoke test: PASS"
    else
        echo "smoke test: FAIL ($failures check(s) failed)"
        if [[ "$started" == 1 ]]; then
            echo "worker logs: docker compose ${files[*]} logs segmenter"
        fi
    fi
}
trap finish EXIT

for tool in docker curl python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "smoke.sh: '$tool' is required but not installed" >&2
        failures=1
        exit 1
    fi
done
if [[ ! -f "$model_dir/$model_file" ]]; then
    echo "smoke.sh: no model at $model_dir/$model_file; export one (maskx export) or set" \
        "MASKX_MODEL_DIR / MASKX_MODEL_FILE" >&2
    failures=1
    exit 1
fi
if [[ ! -f "$sample" ]]; then
    echo "smoke.sh: sample image $sample not found (MASKX_SMOKE_IMAGE)" >&2
    failures=1
    exit 1
fi

echo "== docker compose ${files[*]} up -d --build"
docker compose "${files[@]}" up -d --build
started=1

echo "== waiting up to ${wait_s}s for the worker to be healthy and ready"
deadline=$((SECONDS + wait_s))
health=""
while ((SECONDS < deadline)); do
    container="$(docker compose "${files[@]}" ps -q segmenter)"
    health="$(docker inspect --format '{{.State.Health.Status}}' "$container" 2>/dev/null || true)"
    if [[ "$health" == "healthy" ]] && curl -fsS "$worker/readyz" >/dev/null 2>&1; then
        break
    fi
    sleep 3
done
if [[ "$health" == "healthy" ]]; then pass "container healthy (HEALTHCHECK /healthz)"; else fail "container health is '${health:-unknown}'"; exit 1; fi
if curl -fsS "$worker/readyz" >/dev/null; then pass "GET /readyz is 200"; else fail "GET /readyz is not 200"; exit 1; fi

echo "== POST /segment with $sample"
response="$(mktemp)"
status="$(curl -sS -o "$response" -w '%{http_code}' -F "image=@${sample}" "$worker/segment?score_threshold=0")"
if [[ "$status" == "200" ]]; then pass "POST /segment answered 200"; else fail "POST /segment answered $status: $(head -c 300 "$response")"; fi
if python3 - "$response" <<'EOF'
import json, sys

body = json.load(open(sys.argv[1]))
assert set(body) >= {"model", "image", "detections", "timing_ms"}, f"keys: {sorted(body)}"
assert body["image"]["width"] > 0 and body["image"]["height"] > 0, body["image"]
for det in body["detections"]:
    assert len(det["box"]) == 4 and 0.0 <= det["score"] <= 1.0, det
    assert det["mask_source"] in ("supervised", "transferred"), det
    if det.get("mask") is not None:
        assert det["mask"]["size"] == [body["image"]["height"], body["image"]["width"]], det["mask"]
        assert isinstance(det["mask"]["counts"], str), "RLE counts must be a string"
print(f"  model {body['model']['name']} {body['model']['version']}: "
      f"{len(body['detections'])} detection(s), timing_ms {body['timing_ms']}")
EOF
then pass "response JSON has the contract's shape"; else fail "response JSON does not match the contract"; fi
rm -f "$response"

echo "== Prometheus: maskx_request_duration_seconds for POST /segment"
query='sum(maskx_request_duration_seconds_count{route="/segment"})'
found=0
# The worker is scraped every 10 s; allow a few scrapes.
for _ in $(seq 1 12); do
    answer="$(curl -fsS --get "$prometheus/api/v1/query" --data-urlencode "query=$query" 2>/dev/null || true)"
    if [[ -n "$answer" ]] && python3 -c '
import json, sys
data = json.loads(sys.argv[1])
result = data["data"]["result"]
sys.exit(0 if data["status"] == "success" and result and float(result[0]["value"][1]) >= 1 else 1)
' "$answer"; then
        found=1
        break
    fi
    sleep 5
done
if [[ "$found" == 1 ]]; then pass "Prometheus has the latency histogram ($query >= 1)"; else fail "Prometheus has no samples for $query"; fi

targets="$(curl -fsS "$prometheus/api/v1/targets?state=active" || true)"
if python3 -c '
import json, sys
targets = json.loads(sys.argv[1])["data"]["activeTargets"]
sys.exit(0 if any(t["labels"].get("job") == "maskx" and t["health"] == "up" for t in targets) else 1)
' "$targets" 2>/dev/null; then pass "Prometheus scrape target 'maskx' is up"; else fail "Prometheus scrape target 'maskx' is not up"; fi

((failures == 0))
