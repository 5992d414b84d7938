#!/usr/bin/env bash
# End-to-end smoke test of the compose stack (Docker Compose v2 or Debian's docker-compose 1.29).
#
#   deploy/smoke.sh            # default stack: CPU worker (docker-compose.yml)
#   deploy/smoke.sh --gpu      # GPU worker (+ docker-compose.gpu.yml)
#   deploy/smoke.sh --local    # + deploy/docker-compose.local.yml (no Docker Hub: local Prometheus)
#   deploy/smoke.sh --down     # stop and remove the stack (and its volumes) afterwards
#
# Steps: build and start the stack (the demo model is built first when the model volume has none),
# wait until the worker is healthy and ready, POST a sample image to /v1/segment and check the JSON
# answer, ask Prometheus for the worker's target and a latency quantile, and print PASS or FAIL.
# MASKX_MODEL_DIR, when set, must hold the model to serve (MASKX_MODEL_FILE, model.onnx).
set -euo pipefail

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

cd "$(dirname "$0")/.."

files=(-f docker-compose.yml)
down=0
for arg in "$@"; do
    case "$arg" in
        --gpu) files+=(-f docker-compose.gpu.yml) ;;
        --local) files+=(-f deploy/docker-compose.local.yml) ;;
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
model_dir="${MASKX_MODEL_DIR:-}"
model_file="${MASKX_MODEL_FILE:-model.onnx}"
compose=(docker compose)

failures=0
started=0
pass() { printf '  ok    %s\n' "$1"; }
fail() { printf '  FAIL  %s\n' "$1"; failures=$((failures + 1)); }

finish() {
    if [[ "$down" == 1 ]]; then
        "${compose[@]}" "${files[@]}" down --volumes --remove-orphans >/dev/null 2>&1 || true
    fi
    if [[ "$failures" == 0 ]]; then
        echo "smoke test: PASS"
    else
        echo "smoke test: FAIL ($failures check(s) failed)"
        if [[ "$started" == 1 ]]; then
            echo "logs: ${compose[*]} ${files[*]} logs segmenter model-builder"
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
if ! docker compose version >/dev/null 2>&1; then
    if command -v docker-compose >/dev/null 2>&1; then
        compose=(docker-compose)
    else
        echo "smoke.sh: neither 'docker compose' nor 'docker-compose' is installed" >&2
        failures=1
        exit 1
    fi
fi
# Unset, the stack builds the demo model into its own volume; set, the folder must hold a model.
if [[ -n "$model_dir" && ! -f "$model_dir/$model_file" ]]; then
    echo "smoke.sh: no model at $model_dir/$model_file; export one (maskx export) or unset" \
        "MASKX_MODEL_DIR to let the stack build the demo model" >&2
    failures=1
    exit 1
fi
if [[ ! -f "$sample" ]]; then
    echo "smoke.sh: sample image $sample not found (MASKX_SMOKE_IMAGE)" >&2
    failures=1
    exit 1
fi

echo "== ${compose[*]} ${files[*]} up -d --build"
up_start=$SECONDS
"${compose[@]}" "${files[@]}" up -d --build
started=1

echo "== waiting up to ${wait_s}s for the worker to be healthy and ready"
deadline=$((SECONDS + wait_s))
health=""
while ((SECONDS < deadline)); do
    container="$("${compose[@]}" "${files[@]}" ps -q segmenter)"
    health="$(docker inspect --format '{{.State.Health.Status}}' "$container" 2>/dev/null || true)"
    if [[ "$health" == "healthy" ]] && curl -fsS "$worker/readyz" >/dev/null 2>&1; then
        break
    fi
    sleep 3
done
if [[ "$health" == "healthy" ]]; then pass "container healthy (HEALTHCHECK /readyz)"; else fail "container health is '${health:-unknown}'"; exit 1; fi
echo "  ready $((SECONDS - up_start)) s after 'up' began (image builds and the demo model included)"
if curl -fsS "$worker/readyz" >/dev/null; then pass "GET /readyz is 200"; else fail "GET /readyz is not 200"; exit 1; fi

echo "== POST /v1/segment with $sample"
response="$(mktemp)"
status="$(curl -sS -o "$response" -w '%{http_code}' -F "image=@${sample}" "$worker/v1/segment?score_threshold=0")"
if [[ "$status" == "200" ]]; then pass "POST /v1/segment answered 200"; else fail "POST /v1/segment answered $status: $(head -c 300 "$response")"; fi
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

echo "== Prometheus: maskx_request_duration_seconds for POST /v1/segment"
query='sum(maskx_request_duration_seconds_count{route=~"(/v1)?/segment"})'
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

# Over the whole count since the worker started (a rate() needs requests between two scrapes).
query='histogram_quantile(0.99, sum by (le) (maskx_request_duration_seconds_bucket{route=~"(/v1)?/segment"}))'
answer="$(curl -fsS --get "$prometheus/api/v1/query" --data-urlencode "query=$query" 2>/dev/null || true)"
if p99="$(python3 -c '
import json, math, sys
data = json.loads(sys.argv[1])
value = float(data["data"]["result"][0]["value"][1])
assert math.isfinite(value) and value > 0, value
print(f"{value:.3f}")
' "$answer" 2>/dev/null)"; then pass "Prometheus histogram_quantile p99 of POST /v1/segment: ${p99} s"; else fail "Prometheus answered no finite p99 for $query"; fi

targets="$(curl -fsS "$prometheus/api/v1/targets?state=active" || true)"
if python3 -c '
import json, sys
targets = json.loads(sys.argv[1])["data"]["activeTargets"]
sys.exit(0 if any(t["labels"].get("job") == "maskx" and t["health"] == "up" for t in targets) else 1)
' "$targets" 2>/dev/null; then pass "Prometheus scrape target 'maskx' is up"; else fail "Prometheus scrape target 'maskx' is not up"; fi

((failures == 0))
