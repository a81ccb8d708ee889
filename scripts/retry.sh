#!/usr/bin/env bash
# retry.sh CMD...: runs CMD up to 4 times with a pause between tries. Cargo's crate index mirror
# is sometimes stale for a few minutes; a build that fails for another reason fails 4 times
# quickly and reports the same error.
set -u
for i in 1 2 3 4; do
  "$@" && exit 0
  status=$?
  [ "$i" = 4 ] && exit "$status"
  echo "retry: '$*' failed with $status (try $i/4); retrying in 15 s" >&2
  sleep 15
done
