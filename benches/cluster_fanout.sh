#!/usr/bin/env bash
# Cluster fan-out: 1 publisher → N WHEP viewers over three nodes (issue 16). Redis and three
# release `tessera serve` nodes in network namespaces on one bridge, each taking at most N/3
# viewers (`max_viewers_per_node`); tessera-load, in a fourth namespace, publishes on node 0 and
# sends every viewer to node 0, which serves its share and sends the rest (307) to the other
# nodes, which relay the room from node 0. Prints per node: viewers, CPU; overall: loss, latency.
# All on one machine: the nodes and the load tool share its cores.
#
#   sudo benches/cluster_fanout.sh [N]        (default 300)
#   KBPS=250 PAR=10 sudo benches/cluster_fanout.sh 1500   (a lighter stream, 10 viewers
#                                                          negotiating at a time)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300}
per=${PER:-$(( (n + 2) / 3 ))}
./scripts/retry.sh cargo build --release --locked --bin tessera --bin tessera-load >&2
dir=$(mktemp -d)
net=10.197.$((RANDOM % 200 + 20))
br=tcbf$$
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for i in 0 1 2 3; do ip netns del "tcbf$$-$i" 2>/dev/null || true; done
  ip link del "$br" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
ip link add "$br" type bridge
ip addr add "$net.1/24" dev "$br"
ip link set "$br" up
for i in 0 1 2 3; do
  ns="tcbf$$-$i"
  ip netns add "$ns"
  ip link add "tcbf$$o$i" type veth peer name "tcbf$$i$i"
  ip link set "tcbf$$i$i" netns "$ns"
  ip link set "tcbf$$o$i" master "$br" up
  ip netns exec "$ns" ip addr add "$net.$((10 + i))/24" dev "tcbf$$i$i"
  ip netns exec "$ns" ip link set "tcbf$$i$i" up
  ip netns exec "$ns" ip link set lo up
done
redis-server --bind "$net.1" --port 16400 --save "" --appendonly no --protected-mode no >/dev/null &
pids+=($!)
sleep 0.5
for i in 0 1 2; do
  printf '[cluster]\nredis_url = "redis://%s.1:16400"\nnode_id = "node-%s"\nmax_viewers_per_node = %s\n' "$net" "$i" "$per" >"$dir/n$i.toml"
  ip=$net.$((10 + i))
  RUST_LOG=warn ip netns exec "tcbf$$-$i" target/release/tessera serve --config "$dir/n$i.toml" --data-dir "$dir/n$i" \
    --http-addr "$ip:8080" --rtc-udp-addr "$ip:8443" --rtmp-addr "$ip:1935" >"$dir/out$i" 2>"$dir/err$i" &
  pids+=($!)
  node_pids[i]=$!
  for _ in $(seq 100); do grep -q "HTTP API" "$dir/out$i" 2>/dev/null && break; sleep 0.1; done
done
sleep 3 # every node has read the others
key=$(cat "$dir/n0/admin.key")
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -a before
for i in 0 1 2; do before[i]=$(ticks "${node_pids[i]}"); done
start=$(date +%s.%N)
# Halfway through the measurement, what each node serves.
( sleep $((n / 40 + 15)); curl -s -H "Authorization: Bearer $key" "http://$net.10:8080/v1/cluster/nodes" >"$dir/nodes.json" ) &
j=$(ip netns exec "tcbf$$-3" target/release/tessera-load --server "http://$net.10:8080" --api-key "$key" --room fan \
  --subscribers "$n" --duration 20 --bind-ip "$net.13" --video-kbps "${KBPS:-1500}" --connect-parallel "${PAR:-1}" --json)
end=$(date +%s.%N)
declare -a after
for i in 0 1 2; do after[i]=$(ticks "${node_pids[i]}"); done
python3 - "$n" "$j" "$dir/nodes.json" "$start" "$end" "${before[@]}" "${after[@]}" <<'PY'
import json, sys
n, j, nodes_file, start, end = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
before, after = list(map(float, sys.argv[6:9])), list(map(float, sys.argv[9:12]))
secs = end - start
nodes = {x["id"]: x for x in json.load(open(nodes_file))["items"]}
f = lambda x, d=0: "-" if x is None else f"{x:,.{d}f}"
print("| viewers | per node (node-0 / 1 / 2) | CPU cores per node over the run | loss % avg / max | latency p50 / p99 ms | load tool CPU |")
print("|---|---|---|---|---|---|")
viewers = " / ".join(str(nodes.get(f"node-{i}", {}).get("load", {}).get("viewers", "-")) for i in range(3))
cpu = " / ".join(f"{(a - b) / 100 / secs:.3f}" for b, a in zip(before, after))
print(f"| {n} | {viewers} | {cpu} | {f(j['loss_pct']['avg'], 2)} / {f(j['loss_pct']['max'], 2)} | {f(j['latency_ms']['p50'], 1)} / {f(j['latency_ms']['p99'], 1)} | {f(j['load_tool_cpu_cores'], 3)} |")
PY
