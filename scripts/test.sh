#!/usr/bin/env bash
# Runs every test: unit tests of each crate, then the end-to-end tests that drive the real
# binary. Called by `make test` after scripts/setup.sh --test.
set -euo pipefail
cd "$(dirname "$0")/.."
here=scripts
"$here/retry.sh" cargo fetch --locked
# The end-to-end tests start target/debug/tessera, so build it first.
cargo build --locked --bin tessera
cargo test --locked --workspace
