#!/usr/bin/env bash
# Runs one fuzz target with libFuzzer (cargo-fuzz), growing its corpus in fuzz/corpus/<target>.
# Usage: fuzz/run.sh TARGET [RUNS=10000000] [SANITIZER=none|address] [MAX_SECONDS=0 (no limit)]
# A crash leaves its input in fuzz/artifacts/<target>/; keep it as fuzz/regressions/<target>/
# once fixed, so `make test` replays it forever. The last line printed is libFuzzer's
# "Done N runs in S second(s)".
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: fuzz/run.sh TARGET [RUNS] [SANITIZER]}
runs=${2:-10000000}
sanitizer=${3:-none}
max_seconds=${4:-0}
command -v cargo-fuzz >/dev/null || scripts/retry.sh cargo install cargo-fuzz --locked
toolchain=()
# AddressSanitizer needs a nightly compiler; plain coverage-guided runs work on stable.
[ "$sanitizer" != none ] && toolchain=(+nightly)
mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
cargo "${toolchain[@]}" fuzz run --fuzz-dir fuzz --sanitizer "$sanitizer" --features libfuzzer --release \
  --debug-assertions "$target" "fuzz/corpus/$target" -- -runs="$runs" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="fuzz/artifacts/$target/" -print_final_stats=1 -max_total_time="$max_seconds" 2>&1 | tail -n 40
