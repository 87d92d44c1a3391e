#!/usr/bin/env bash
# Soak: mixed load against one gateway for a while, then quiet, sampling the gateway's RSS, open
# file descriptors and a probe's p99 latency every 10 s into a CSV (and an SVG chart). Passes
# when RSS and descriptors come back to their idle level after the load. Not a test: a run
# takes DURATION plus a minute.
#
#   benches/soak.sh [DURATION_SECONDS]      # default 600 (10 minutes)
#
# The load, all at once, all through TLS with client certificates (oha and python3):
#   keep-alive GETs (16 connections), HTTP/2 (2 connections x 8 streams), new handshakes
#   (20/s), bad API keys (401 then the auth_failures 429), a forbidden route (403), a rate
#   limited route (429), 1 MiB uploads (5/s), and WebSocket tunnels (open, 20 echoes, close).
# Output: target/bench/soak-<UTC time>.csv and .svg; the verdict on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-600}
SAMPLE=10
PORT=18643
ADMIN=19943
UPSTREAM=18680
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=target/bench
mkdir -p "$OUT"
CSV="$OUT/soak-$STAMP.csv"
OHA=$(command -v oha || echo "$HOME/.cargo/bin/oha")
[ -x "$OHA" ] || { echo "oha is missing: cargo install oha --version 1.16.0 (benches/peers.sh does)" >&2; exit 1; }

cargo build --release --quiet
BIN=$PWD/target/release/portcullis
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

(cd "$WORK" && "$BIN" certs init --client reader-bob --client ops-alice:Platform >/dev/null)
head -c $((1024 * 1024)) /dev/urandom > "$WORK/upload.bin"
cat > "$WORK/gateway.yaml" <<EOF
listen: "127.0.0.1:$PORT"
tls: { cert: certs/server.crt, key: certs/server.key, client_ca: certs/ca.crt, crl: [certs/ca.crl] }
admin: { listen: "127.0.0.1:$ADMIN" }
upstreams:
  app: { url: "http://127.0.0.1:$UPSTREAM" }
principals:
  - { name: ops, cert: { cn: "ops-*", ou: Platform }, roles: [admin, reader] }
  - { name: readers, cert: { cn: "reader-*" }, roles: [reader] }
  - { name: robot, api_key: { sha256: "$(printf '%064d' 0)" }, roles: [reader] }
routes:
  - { name: admin, match: { prefix: /admin/ }, upstream: app, allow: { roles: [admin] } }
  - { name: limited, match: { prefix: /limited/ }, upstream: app, allow: { roles: [reader] }, rate_limit: { key: identity, rate: 10/s, burst: 10 } }
  - { name: ws, match: { prefix: /ws/ }, upstream: app, allow: { roles: [reader] }, websocket: true }
  - { name: reader, match: { prefix: / }, upstream: app, allow: { roles: [reader] } }
limits: { max_body_bytes: 4MiB }
logging: { access_log: false }
EOF

python3 benches/soak_upstream.py "$UPSTREAM" & pids+=($!)
(cd "$WORK" && exec "$BIN" run -c gateway.yaml >"$WORK/gateway.log" 2>&1) & pids+=($!)
GW=""
for _ in $(seq 100); do
  GW=$(pgrep -f "$BIN run -c gateway.yaml" | head -1 || true)
  curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && [ -n "$GW" ] && break
  sleep 0.1
done
[ -n "$GW" ] || { echo "the gateway did not start:" >&2; cat "$WORK/gateway.log" >&2; exit 1; }

URL="https://localhost:$PORT"
TLS=(--cacert "$WORK/certs/ca.crt" --cert "$WORK/certs/clients/reader-bob.crt" --key "$WORK/certs/clients/reader-bob.key")
rss() { awk '/VmRSS/ {print $2}' "/proc/$GW/status"; }
fds() { ls "/proc/$GW/fd" | wc -l; }
p99() {
  "$OHA" --no-tui "${TLS[@]}" -n 200 -c 2 --output-format json "$URL/probe" 2>/dev/null \
    | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["latencyPercentiles"]["p99"]*1000, 2))' 2>/dev/null || echo ""
}
echo "t_s,phase,rss_kib,fds,p99_ms" > "$CSV"
start=$(date +%s)
sample() { echo "$(( $(date +%s) - start )),$1,$(rss),$(fds),$(p99)" >> "$CSV"; }

sleep 2
sample idle
IDLE_RSS=$(rss); IDLE_FDS=$(fds)
echo "idle: RSS ${IDLE_RSS} KiB, ${IDLE_FDS} fds; loading for ${DURATION}s"

load() {
  local name=$1; shift
  "$OHA" --no-tui "${TLS[@]}" -z "${DURATION}s" --output-format json -o "$WORK/load-$name.json" "$@" \
    >/dev/null 2>&1 & pids+=($!)
}
load keep-alive -c 16 "$URL/ka"
load http2 --http2 -c 2 -p 8 "$URL/h2"
load handshakes --disable-keepalive -c 2 -q 20 "$URL/handshake"
load bad-key -c 1 -q 20 -H "x-api-key: not-a-key" "$URL/bad-key"
load forbidden -c 1 -q 20 "$URL/admin/users"
load limited -c 2 -q 50 "$URL/limited/x"
load uploads -c 2 -q 5 -m POST -D "$WORK/upload.bin" "$URL/upload"
python3 benches/soak_ws.py localhost "$PORT" "$WORK/certs/ca.crt" "$WORK/certs/clients/reader-bob.crt" \
  "$WORK/certs/clients/reader-bob.key" "$DURATION" > "$WORK/ws.txt" & pids+=($!)

end=$(( start + DURATION + 2 ))
while [ "$(date +%s)" -lt "$end" ]; do sleep "$SAMPLE"; sample load; done
wait "${pids[@]:2}" 2>/dev/null || true
for f in "$WORK"/load-*.json; do
  python3 - "$f" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
name = sys.argv[1].rsplit("load-", 1)[1][:-5]
print(f"{name}: {sum(j['statusCodeDistribution'].values())} responses {j['statusCodeDistribution']}, errors {j.get('errorDistribution', {})}")
PY
done
cat "$WORK/ws.txt"
for _ in 1 2 3 4 5 6; do sleep "$SAMPLE"; sample quiet; done

AFTER_RSS=$(rss); AFTER_FDS=$(fds)
python3 benches/soak_chart.py "$CSV" > "${CSV%.csv}.svg"
echo "CSV: $CSV; chart: ${CSV%.csv}.svg"
# Back to idle: descriptors exactly (the probe's connections are closed by then), RSS within
# 25 % or 8 MiB of where it started (the allocator keeps some freed pages for reuse).
limit=$(( IDLE_RSS + (IDLE_RSS / 4 > 8192 ? IDLE_RSS / 4 : 8192) ))
if [ "$AFTER_FDS" -le "$IDLE_FDS" ] && [ "$AFTER_RSS" -le "$limit" ]; then
  echo "PASS: after the load, RSS ${AFTER_RSS} KiB (idle ${IDLE_RSS}, limit ${limit}), ${AFTER_FDS} fds (idle ${IDLE_FDS})"
else
  echo "FAIL: after the load, RSS ${AFTER_RSS} KiB (idle ${IDLE_RSS}, limit ${limit}), ${AFTER_FDS} fds (idle ${IDLE_FDS})"
  exit 1
fi
