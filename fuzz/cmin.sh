#!/usr/bin/env bash
# Minimizes the corpora kept in the repo (libFuzzer merge: the smallest set of inputs with the
# same coverage). Usage: fuzz/cmin.sh [TARGET...] (default: every target).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(amf0 rtmp_server rtmp_client flv rtp stun rtcp rtp_headers session dtls sdp_offer sdp_answer jwt task_file json_bodies room_data relay_frames s3_answers)
for t in "${targets[@]}"; do
  before=$(ls "fuzz/corpus/$t" | wc -l)
  cargo fuzz cmin --fuzz-dir fuzz --sanitizer none --features libfuzzer --release --debug-assertions "$t" "fuzz/corpus/$t" >/dev/null 2>&1
  echo "$t: $before -> $(ls "fuzz/corpus/$t" | wc -l) inputs"
done
