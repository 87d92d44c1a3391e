#!/usr/bin/env bash
# portcullis in the shared peer harness (../shared/bench/peers.sh): the same mTLS proxying job
# as nginx and HAProxy, on the same machine, PKI and load generator, measured side by side.
#
#   benches/peers.sh                       # all templates, 3 rounds x 10 s each (about 30 minutes)
#   benches/peers.sh --runs 1 --duration 5 # a quick look
#   TEMPLATE=policy benches/peers.sh       # one template: plain (proxying only), policy
#                                          # (identity mapping, roles, rate limit, JSON access log)
#                                          # or policy-redis (the same, limits in redis-server,
#                                          # which this script starts on CPU 1, port 16399)
#   benches/chart.py target/bench/peers-*.json > docs/peers.svg   # the chart in benchmarks.md
#
# Extra arguments go to peers.sh (see its --help). Reports land in target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH_DIR:-../shared/bench}
templates=${TEMPLATE:-plain policy policy-redis}
[ -x "$bench/peers.sh" ] || { echo "error: $bench/peers.sh not found (set BENCH_DIR)" >&2; exit 1; }
cargo build --release --locked
mkdir -p target/bench
stamp=$(date -u +%Y%m%dT%H%M%SZ)
redis_pid=
trap '[ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null' EXIT
for template in $templates; do
  echo "== template: $template"
  if [ "$template" = policy-redis ] && ! redis-cli -p 16399 ping >/dev/null 2>&1; then
    command -v redis-server >/dev/null || { echo "error: policy-redis needs redis-server" >&2; exit 1; }
    taskset -c "${LOAD_CPU:-1}" redis-server --port 16399 --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
    redis_pid=$!
    for _ in $(seq 50); do redis-cli -p 16399 ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  "$bench/peers.sh" --proxies "${PROXIES:-nginx haproxy}" \
    --proxy "exec $PWD/target/release/portcullis run -c \"\$BENCH_CONFIG\"" \
    --proxy-name portcullis \
    --proxy-template "$bench/templates/portcullis-$template.yaml.tmpl" \
    --out "target/bench/peers-$template-$stamp.json" "$@"
done
