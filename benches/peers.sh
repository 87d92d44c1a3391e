#!/usr/bin/env bash
# portcullis in the shared peer harness (../shared/bench/peers.sh): the same mTLS proxying job
# as nginx and HAProxy, on the same machine, PKI and load generator, measured side by side.
#
#   benches/peers.sh                       # both templates, 3 rounds x 10 s each (about 20 minutes)
#   benches/peers.sh --runs 1 --duration 5 # a quick look
#   TEMPLATE=policy benches/peers.sh       # one template: plain (proxying only) or policy
#                                          # (identity mapping, roles, rate limit, JSON access log)
#
# Extra arguments go to peers.sh (see its --help). Reports land in target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH_DIR:-../shared/bench}
templates=${TEMPLATE:-plain policy}
[ -x "$bench/peers.sh" ] || { echo "error: $bench/peers.sh not found (set BENCH_DIR)" >&2; exit 1; }
cargo build --release --locked
mkdir -p target/bench
stamp=$(date -u +%Y%m%dT%H%M%SZ)
for template in $templates; do
  echo "== template: $template"
  "$bench/peers.sh" --proxies "${PROXIES:-nginx haproxy}" \
    --proxy "exec $PWD/target/release/portcullis run -c \"\$BENCH_CONFIG\"" \
    --proxy-name portcullis \
    --proxy-template "$bench/templates/portcullis-$template.yaml.tmpl" \
    --out "target/bench/peers-$template-$stamp.json" "$@"
done
