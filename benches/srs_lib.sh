# Shared by the scripts that run SRS side by side (sfu_vs_srs.sh, rtmp_vs_srs.sh). Source it
# with $ns set, from the repository root: it makes the loopback-only network namespace $ns
# (removed on exit, with whatever runs in it) and a temporary $dir, and defines `inns CMD …`
# (run in the namespace), `srs_conf on|off` ($dir/srs.conf: RTC on UDP 8000, the HTTP API with
# WHIP/WHEP on 1985, RTMP on 1935, errors only; the argument is `rtmp_to_rtc`) and `stop_pid PID`
# (a server gone before the next one binds the same ports).
dir=$(mktemp -d)
cleanup() { ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null; sleep 1; ip netns del "$ns" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
inns() { ip netns exec "$ns" "$@"; }

srs_conf() {
  cat > "$dir/srs.conf" <<CONF
listen 1935;
max_connections 4000;
daemon off;
srs_log_tank console;
srs_log_level error;
http_api { enabled on; listen 1985; }
rtc_server { enabled on; listen 8000; candidate 127.0.0.1; }
vhost __defaultVhost__ { rtc { enabled on; rtmp_to_rtc $1; rtc_to_rtmp off; } }
CONF
}

stop_pid() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$1" 2>/dev/null || true
}
