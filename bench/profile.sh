#!/usr/bin/env bash
# profile.sh BACKEND [WORKLOAD]: where a relay worker's time goes under load.
#
# Starts target/release/lanrage-relay on 127.0.0.1 with `backend: BACKEND`
# (epoll or io_uring) and one worker, drives it with lanrage-loadgen
# (WORKLOAD: bulk (default) or gaming, prebuilt packets, 8 s), records the
# relay with `perf record -g` for 4 s in the middle, and prints the delivered
# rate and the hottest call paths (children view). Needs perf and root (or
# kernel.perf_event_paranoid <= 1). Everything stays on 127.0.0.1.
#
# Environment: OUT (directory for relay.yaml, perf.data, load.json, the
# report; default a temp dir that is kept and printed).
set -euo pipefail

BACKEND=${1:?usage: profile.sh epoll|io_uring [bulk|gaming]}
WORKLOAD=${2:-bulk}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release"
OUT=${OUT:-$(mktemp -d -t lanrage-profile.XXXXXX)}
mkdir -p "$OUT"

command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
(cd "$ROOT" && cargo build --release -q -p lanrage-relay -p lanrage-bench)

free_port() {
    python3 -c 'import socket,sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "$1"
}

PORT=$(free_port udp)
cat >"$OUT/relay.yaml" <<EOF
listen: "127.0.0.1:$PORT"
private_key_file: "$OUT/private.key"
log: warn
handshake_rate_limit: { per_second: 1000000, burst: 1000000 }
under_load_handshakes_per_second: 10000000
backend: $BACKEND
workers: 1
EOF
KEY=$("$BIN/lanrage-relay" --config "$OUT/relay.yaml" public-key 2>/dev/null)
"$BIN/lanrage-relay" --config "$OUT/relay.yaml" 2>"$OUT/relay.log" &
RELAY=$!
trap 'kill $RELAY 2>/dev/null || true; wait $RELAY 2>/dev/null || true' EXIT
sleep 0.5

"$BIN/lanrage-loadgen" --relay "127.0.0.1:$PORT" --relay-public-key "$KEY" \
    --preset "$WORKLOAD" --mode prebuilt --duration 8 --no-baseline --json \
    >"$OUT/load.json" 2>/dev/null &
LOAD=$!
# Setup (handshakes) first; the gaming mix needs a few seconds for 1000 pairs.
sleep $([ "$WORKLOAD" = gaming ] && echo 6 || echo 2)
perf record -F 2000 -g -p "$RELAY" -o "$OUT/perf.data" -- sleep 4 >/dev/null 2>&1
wait "$LOAD"

echo "backend $BACKEND, workload $WORKLOAD:"
jq -c '.phases.forwarded | {offered_pps, delivered_pps, loss_ratio}' "$OUT/load.json"
perf report -i "$OUT/perf.data" --children --sort sym --stdio -g none 2>/dev/null |
    grep -v '^#' | grep '%' | head -40 | tee "$OUT/report.txt"
echo "kept in $OUT"
