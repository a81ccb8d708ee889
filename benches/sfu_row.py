"""One markdown row of an SFU benchmark from tessera-load's JSON (shared by sfu_ab.sh and
sfu_workers.sh): python3 benches/sfu_row.py LABEL SUBSCRIBERS JSON MIDDLE_CELL

MIDDLE_CELL goes between the latencies (as the tool read each packet, and as it arrived at
the subscriber's socket: the kernel's stamp) and the load tool's CPU: sfu_ab.sh gives `connect_s`
(pass the word `connect`), sfu_workers.sh the workers' busy ratios."""
import json
import sys

label, n, j, middle = sys.argv[1], sys.argv[2], json.loads(sys.argv[3] or "{}"), sys.argv[4]


def g(*k):
    return j.get(k[0]) if len(k) == 1 else (j.get(k[0]) or {}).get(k[1])


def f(x, d=0):
    return "-" if x is None else f"{x:,.{d}f}"


if middle == "connect":
    middle = f(g("connect_s"), 2)
print(f"| {label} | {n} | {f(g('forwarded_pps'))} | {f(g('server_cpu_cores'), 3)} | {f(g('server_pps_per_core'))} | {f(g('loss_pct', 'max'), 2)} | "
      f"{f(g('latency_ms', 'p50'), 1)} / {f(g('latency_ms', 'p99'), 1)} | {f(g('arrival_latency_ms', 'p50'), 1)} / {f(g('arrival_latency_ms', 'p99'), 1)} | {middle} | {f(g('load_tool_cpu_cores'), 2)} |", flush=True)
