#!/usr/bin/env bash
# Runs every test: unit tests of each crate, then the end-to-end tests that drive the real
# binary. Called by `make test` after scripts/setup.sh --test. Ends with one summary line,
# "tests: N passed, M failed", after the failures' panic messages.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/retry.sh cargo fetch --locked || exit 1
# Habits: formatting and lints (clippy warnings are errors). The toolchain's rustfmt and clippy
# components are needed; a toolchain without them skips the check and says so.
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check || { echo "tests: cargo fmt --check failed (run cargo fmt --all)"; exit 1; }
else
  echo "tests: rustfmt is not installed; format check skipped" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --locked --workspace --all-targets -- -D warnings || { echo "tests: clippy found warnings"; exit 1; }
else
  echo "tests: clippy is not installed; lint check skipped" >&2
fi
# The end-to-end tests start target/debug/tessera (and the test bed's linkem), so build them first.
cargo build --locked --bin tessera --bin linkem || exit 1
log=$(mktemp)
cargo test --locked --workspace --lib --bins --tests --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The failures' panic messages again, short, last: a long log's tail is what a reader sees.
grep -A2 "panicked at" "$log" | cut -c1-400 | sed 's/^/  /' | tail -n 40
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
