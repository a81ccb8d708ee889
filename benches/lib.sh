# Shared by the output benchmarks: a release server on free loopback ports with a temporary
# data dir, and an RTMP publisher into room `bench` as user `cam`. Source it from a script that
# has cd'd to the repository root; it sets $dir, $http, $rtmp, $server, $key, $pub and cleans up
# on exit (plus anything the script adds to $cleanup_pids).
cargo build --release --locked --bin tessera >&2
dir=$(mktemp -d)
cleanup_pids=""
pub=""
trap 'kill $server $pub $cleanup_pids 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
http=127.0.0.1:$((20000 + RANDOM % 10000)); rtmp=$((30000 + RANDOM % 10000))
udp=127.0.0.1:$((50000 + RANDOM % 10000))
RUST_LOG=warn target/release/tessera serve --data-dir "$dir/data" --http-addr "$http" --rtmp-addr 127.0.0.1:$rtmp --rtc-udp-addr "$udp" >"$dir/out" 2>"$dir/err" &
server=$!
for _ in $(seq 50); do [ -f "$dir/data/admin.key" ] && grep -q "HTTP API" "$dir/out" && break; sleep 0.2; done
key=$(cat "$dir/data/admin.key")

# publish GOP: ffmpeg pushes 640x360 25 fps H.264 (no B-frames, a keyframe every GOP frames)
# and an AAC tone to rtmp://…/push/bench/cam.
publish() {
  local tok
  tok=$(target/release/tessera token --data-dir "$dir/data" --room bench --user cam)
  ffmpeg -hide_banner -loglevel error -re -f lavfi -i testsrc2=size=640x360:rate=25 -f lavfi -i sine=frequency=440 \
    -c:v libx264 -preset ultrafast -tune zerolatency -bf 0 -g "$1" -c:a aac -f flv "rtmp://127.0.0.1:$rtmp/push/bench/cam?token=$tok" &
  pub=$!
}
