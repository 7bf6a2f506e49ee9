#!/usr/bin/env bash
# xdp_compare.sh: the userspace relay (backend epoll, backend io_uring; one
# worker) against the XDP fast path (native and generic/skb mode), on ONE veth
# topology built once, in one run (lanrage-xdpbench; docs/xdp-benchmarks.md):
#
#   relay 10.77.0.1 ---- br0 ---- a 10.77.0.2 (senders)
#                          `----- b 10.77.0.3 (receivers)
#
# Workloads (prebuilt WireGuard transport packets, stamped for loss and
# one-way latency):
#   bulk:      1 pair, 1260-byte datagrams, as fast as possible
#   gaming:    1000 pairs x 64 pps, 160-byte datagrams (64,000 pps)
#   gamingmax: 1000 pairs, 160-byte datagrams, as fast as possible
#   paced:     bulk at PACED_RATE pps (latency at a load every case carries)
#   bulkcap, gamingcap: the highest rate of bulk / the gaming mix carried with
#              at most 0.1 % loss (a flood trial, then 6 bisection trials of
#              TRIAL_SECS each; the row is the best passing trial)
#   bulksink, gamingsink: the same capacities, counted and dropped at B's
#              ingress by nftables (no latency; the generator CPU only sends)
# RUNS times each (cases interleaved within a run), then a table of medians
# with ratios to the best userspace backend of each workload.
#
# Pinning (default): generator (sender, receiver, B's receive softirq) on
# GEN_CPU, all forwarding work (relay process, and via RPS everything after
# A's frames enter the bridge) on FWD_CPU. NO_PIN=1 lets the kernel decide.
#
# Environment: RUNS (3), DURATION seconds per measurement (10), TRIAL_SECS
# (2), WORKLOADS ("bulk gaming gamingmax paced bulkcap gamingcap bulksink
# gamingsink"), CASES ("epoll io_uring xdp-native xdp-skb"), PACED_RATE (50000), GEN_CPU (0), FWD_CPU (1), NO_PIN,
# BRIDGE_NF_OFF (1: no netfilter on the switch's bridged frames), OUT (a
# directory to keep results.jsonl and the log in; default: a temp dir,
# removed). Needs root, clang, libbpf-dev, iproute2, nftables (sink
# workloads), python3.
# Traffic stays in namespaces the benchmark creates and deletes.
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
WORKLOADS=${WORKLOADS:-bulk gaming gamingmax paced bulkcap gamingcap bulksink gamingsink}
CASES=${CASES:-epoll io_uring xdp-native xdp-skb}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET/release"
TMP=$(mktemp -d -t lanrage-xdpcompare.XXXXXX)
RESULTS=${OUT:-$TMP}
mkdir -p "$RESULTS"
BENCH_PID=

cleanup() {
    if [ -n "$BENCH_PID" ]; then
        kill "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
        # Backstop: the benchmark deletes its namespaces itself, also when
        # interrupted; these are its names (lrg<pid>-<n>-<role>).
        ip netns list 2>/dev/null | awk -v p="lrg$BENCH_PID-" 'index($1, p) == 1 {print $1}' |
            while read -r ns; do ip netns del "$ns" 2>/dev/null || true; done
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "needs root (namespaces, XDP)"; exit 1; }
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "building release binaries (lanrage-relay; lanrage-bench with --features xdp)"
(cd "$ROOT" && cargo build --release -q -p lanrage-relay &&
    cargo build --release -q -p lanrage-bench --features xdp --bin lanrage-xdpbench)

PIN_ARGS=(--gen-cpu "${GEN_CPU:-0}" --fwd-cpu "${FWD_CPU:-1}")
[ -n "${NO_PIN:-}" ] && PIN_ARGS+=(--no-pin)
[ -n "${BRIDGE_NF_OFF:-}" ] && PIN_ARGS+=(--bridge-nf-off)
"$BIN/lanrage-xdpbench" --relay-bin "$BIN/lanrage-relay" \
    --runs "$RUNS" --duration "$DURATION" --paced-rate "${PACED_RATE:-50000}" \
    --trial-secs "${TRIAL_SECS:-2}" \
    --workloads "$(echo "$WORKLOADS" | tr ' ' ',')" --cases "$(echo "$CASES" | tr ' ' ',')" \
    "${PIN_ARGS[@]}" >"$RESULTS/results.jsonl" 2> >(tee "$RESULTS/bench.log" >&2) &
BENCH_PID=$!
wait "$BENCH_PID"
BENCH_PID=

echo
echo "Load average before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; $(uname -r)"
python3 - "$RESULTS/results.jsonl" "$DURATION" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
dur = sys.argv[2]
if not rows:
    sys.exit("no results")
print(f"Per run ({dur} s each; capacity workloads: the best trial; one-way latency in µs;")
print(" fwd/gen = busy fraction of the forwarding/generator CPU, fwd si = its softirq part;")
print(" drops: backlog of the forwarding CPU / relay socket / B's sockets):")
hdr = f"{'workload':<9} {'case':<10} {'run':>3} {'offered pps':>11} {'deliv pps':>10} {'loss %':>7} {'p50':>8} {'p99':>9} {'p99.9':>9} {'fwd':>5} {'fwd si':>6} {'gen':>5} {'pps/fwd core':>12} {'xdp tx':>9} {'drops bl/rly/B':>16}"
print(hdr)
for r in rows:
    l, d = r["latency_us"], r["drops"]
    print(f"{r['workload']:<9} {r['case']:<10} {r['run']:>3} {r['offered_pps']:>11.0f} {r['delivered_pps']:>10.0f} "
          f"{100*r['loss_ratio']:>7.2f} {l['p50']:>8.1f} {l['p99']:>9.1f} {l['p999']:>9.1f} "
          f"{r['fwd_cpu_busy']:>5.2f} {r['fwd_cpu_softirq']:>6.2f} {r['gen_cpu_busy']:>5.2f} {r['pps_per_fwd_core']:>12.0f} "
          f"{(r['xdp_tx'] if r['xdp_tx'] is not None else '-'):>9} "
          f"{d['backlog_fwd_cpu']:>6}/{d['relay_rcvbuf']}/{d['b_rcvbuf']}")
order = []
groups = {}
for r in rows:
    k = (r["workload"], r["case"])
    if k not in groups:
        order.append(k)
        groups[k] = []
    groups[k].append(r)
def med(k, f):
    return statistics.median(f(r) for r in groups[k])
print()
print(f"Medians of {max(len(v) for v in groups.values())} runs; x best = ratio to the best userspace backend (by median delivered pps) of the workload:")
print(f"{'workload':<9} {'case':<10} {'n':>2} {'offered pps':>11} {'deliv pps':>10} {'x best':>6} {'loss %':>7} {'p50':>8} {'p99':>9} {'p99.9':>9} {'fwd':>5} {'pps/fwd core':>12} {'x best':>6}")
for k in order:
    w, c = k
    users = [(w, u) for u in ("epoll", "io_uring") if (w, u) in groups]
    best = max(users, key=lambda u: med(u, lambda r: r["delivered_pps"])) if users else None
    pps = med(k, lambda r: r["delivered_pps"])
    ppc = med(k, lambda r: r["pps_per_fwd_core"])
    ratio = lambda a, b: f"{a / b:.2f}" if b else "-"
    bp = med(best, lambda r: r["delivered_pps"]) if best else 0
    bc = med(best, lambda r: r["pps_per_fwd_core"]) if best else 0
    print(f"{w:<9} {c:<10} {len(groups[k]):>2} {med(k, lambda r: r['offered_pps']):>11.0f} {pps:>10.0f} {ratio(pps, bp):>6} "
          f"{100 * med(k, lambda r: r['loss_ratio']):>7.2f} {med(k, lambda r: r['latency_us']['p50']):>8.1f} "
          f"{med(k, lambda r: r['latency_us']['p99']):>9.1f} {med(k, lambda r: r['latency_us']['p999']):>9.1f} "
          f"{med(k, lambda r: r['fwd_cpu_busy']):>5.2f} {ppc:>12.0f} {ratio(ppc, bc):>6}")
EOF
[ -n "${OUT:-}" ] && log "results kept in $RESULTS"
exit 0
