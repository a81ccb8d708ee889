#!/usr/bin/env bash
# The fuzzing campaign: every target for RUNS executions (default 10 million), one after the
# other, appending "target runs seconds new_units crashes" lines to fuzz/campaign.log.
# Usage: fuzz/campaign.sh [RUNS] [TARGET...]; FUZZ_MAX_SECONDS caps each target's time.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10000000}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(amf0 rtmp_server rtmp_client flv rtp stun rtcp rtp_headers session dtls sdp_offer sdp_answer jwt task_file json_bodies room_data relay_frames s3_answers)
for t in "${targets[@]}"; do
  started=$(date +%s)
  out=$(fuzz/run.sh "$t" "$runs" none "${FUZZ_MAX_SECONDS:-0}" 2>&1)
  status=$?
  done_line=$(grep -E '^Done [0-9]+ runs' <<<"$out" | tail -1)
  new=$(grep -E 'stat::new_units_added' <<<"$out" | awk '{print $2}')
  crashes=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
  echo "$(date -u +%F) $t exit=$status ${done_line:-no-done-line} new_units=${new:-?} artifacts=$crashes" | tee -a fuzz/campaign.log
  [ $status -ne 0 ] && tail -40 <<<"$out" > "fuzz/artifacts/$t.last-output.txt"
done
