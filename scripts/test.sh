#!/usr/bin/env bash
# Runs every test: unit tests of each crate, then the end-to-end tests that drive the real
# binary. Called by `make test` after scripts/setup.sh --test. Ends with one summary line,
# "tests: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/retry.sh cargo fetch --locked || exit 1
# The end-to-end tests start target/debug/tessera, so build it first.
cargo build --locked --bin tessera || exit 1
log=$(mktemp)
cargo test --locked --workspace --lib --bins --tests --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
