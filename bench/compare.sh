#!/usr/bin/env bash
# compare.sh: the same load, in the same run on this machine, through
#   (1) the LANrage relay (target/release/lanrage-relay): target "relay" runs
#       its configured default (backend: auto), "epoll" and "uring" pin the
#       backend to epoll or io_uring,
#   (2) naive-forwarder (one recv_from + one send_to per datagram),
#   (3) nginx's UDP stream proxy (worker_processes 1),
# for two workloads (prebuilt mode, so the generator is cheap):
#   gaming: 1000 pairs x 64 packets/s, 100-byte payloads (160-byte datagrams)
#   bulk:   1 pair as fast as possible, 1200-byte payloads (1260-byte datagrams)
# RUNS times each (targets interleaved within a run, so machine noise hits all
# of them alike), then a table of medians with ratios to the naive forwarder.
#
# Environment: RUNS (3), DURATION seconds per measurement (10), OUT (a
# directory to keep the JSON results in; default: a temp dir, removed),
# TARGETS ("relay naive nginx"; also "epoll", "uring", and "before": the
# relay binary at RELAY_BEFORE_BIN, same config), WORKLOADS ("gaming
# bulk"; also "paced": bulk at PACED_RATE pps, default 100000, and
# "gamingmax": the gaming mix at GAMING_RATE pps per pair, default 250), RELAY_EXTRA_YAML
# (top-level lines appended to the relay's config, e.g. "workers: 1"),
# NGINX_PROXY_RESPONSES (0; "none" leaves the directive out). With 0, nginx
# ends a UDP session as soon as it has forwarded the datagram, so every
# datagram pays for a new upstream socket; without it, a session (one
# upstream socket per sender) lives until proxy_timeout.
# Everything listens on 127.0.0.1 only; every process started here is
# stopped on exit.
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
SCRIPT=compare
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
BIN="$ROOT/target/release"

need_tools() {
    if ! command -v jq >/dev/null || ! command -v nginx >/dev/null ||
        ! ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1; then
        log "installing jq, nginx and libnginx-mod-stream (apt-get)"
        apt-get update -qq && apt-get install -y -qq jq nginx libnginx-mod-stream >/dev/null
    fi
}

# Waits (at most 10 s) until something listens on UDP port $1.
wait_udp() {
    local i
    for i in $(seq 1 100); do
        if ss -Hlun "sport = :$1" 2>/dev/null | grep -q .; then return 0; fi
        sleep 0.1
    done
    log "nothing is listening on udp port $1"
    return 1
}

# ---- the three targets: start_X sets TARGET_PID and TARGET_ARGS (for loadgen) --
# (Not called in $(...): a background child would hold the pipe open.)

start_epoll() { RELAY_BACKEND="backend: epoll" start_relay; }
# Another build of the relay (RELAY_BEFORE_BIN, e.g. one built from an
# earlier commit) under the same config: a before/after comparison in one run.
start_before() {
    [ -x "${RELAY_BEFORE_BIN:-}" ] || { log "target before: set RELAY_BEFORE_BIN to a lanrage-relay binary"; exit 2; }
    RELAY_BIN=$RELAY_BEFORE_BIN start_relay
}
start_uring() { RELAY_BACKEND="backend: io_uring" start_relay; }

start_relay() {
    local port metrics dir=$TMP/relay
    port=$(free_port udp)
    metrics=$(free_port tcp)
    mkdir -p "$dir"
    # Rate limits raised: all simulated peers share 127.0.0.1, and each pair
    # costs 4 handshake tokens at setup plus 2 refreshes per 20 s.
    cat >"$dir/relay.yaml" <<EOF
listen: "127.0.0.1:$port"
metrics_listen: "127.0.0.1:$metrics"
private_key_file: "$dir/private.key"
log: warn
handshake_rate_limit: { per_second: 1000000, burst: 1000000 }
under_load_handshakes_per_second: 10000000
${RELAY_BACKEND:-}
${RELAY_EXTRA_YAML:-}
EOF
    local key
    local relay=${RELAY_BIN:-$BIN/lanrage-relay}
    key=$("$relay" --config "$dir/relay.yaml" public-key 2>/dev/null)
    "$relay" --config "$dir/relay.yaml" >/dev/null 2>>"$dir/relay.log" &
    TARGET_PID=$!
    PIDS+=("$TARGET_PID")
    wait_udp "$port"
    TARGET_ARGS="--relay 127.0.0.1:$port --relay-public-key $key"
}

start_naive() {
    local port sink=$1
    port=$(free_port udp)
    "$BIN/naive-forwarder" --listen "127.0.0.1:$port" --to "127.0.0.1:$sink" \
        --max-seconds 600 >/dev/null 2>>"$TMP/naive.log" &
    TARGET_PID=$!
    PIDS+=("$TARGET_PID")
    wait_udp "$port"
    TARGET_ARGS="--forwarder 127.0.0.1:$port --sink-port $sink"
}

start_nginx() {
    local port sink=$1 dir=$TMP/nginx
    port=$(free_port udp)
    mkdir -p "$dir"
    local responses="proxy_responses ${NGINX_PROXY_RESPONSES:-0};"
    [ "${NGINX_PROXY_RESPONSES:-0}" = none ] && responses="# proxy_responses: unset"
    # One worker, like the relay's single epoll thread and the naive forwarder.
    # Each sender socket is its own UDP "session" in nginx, with its own
    # upstream socket: 1000 pairs need ~2000 descriptors and connections.
    cat >"$dir/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 1;
worker_rlimit_nofile 16384;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 8192; }
stream {
    server {
        listen 127.0.0.1:$port udp;
        proxy_pass 127.0.0.1:$sink;
        $responses
        proxy_timeout 30s;
    }
}
EOF
    nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >/dev/null 2>&1 &
    TARGET_PID=$!
    PIDS+=("$TARGET_PID")
    wait_udp "$port"
    TARGET_ARGS="--forwarder 127.0.0.1:$port --sink-port $sink"
}

# ---- measurement -------------------------------------------------------------

workload_args() {
    case $1 in
    gaming) echo "--preset gaming" ;;
    bulk) echo "--preset bulk" ;;
    # The bulk flow paced at PACED_RATE pps (set it to half of the measured
    # maximum), for latency under a load the relay can carry.
    paced) echo "--preset bulk --rate ${PACED_RATE:-100000}" ;;
    # The gaming mix with every pair sending GAMING_RATE packets/s (default
    # 250, i.e. 250,000 pps in all): small packets to 1000 destinations, so
    # GSO can't coalesce and the per-datagram cost is what is measured.
    gamingmax) echo "--preset gaming --rate ${GAMING_RATE:-250}" ;;
    esac
}

measure() { # workload target run
    local workload=$1 target=$2 run=$3 sink
    sink=$(free_port udp)
    "start_$target" "$sink"
    log "run $run/$RUNS: $workload through $target"
    # shellcheck disable=SC2046,SC2086
    if ! "$BIN/lanrage-loadgen" $TARGET_ARGS $(workload_args "$workload") --mode prebuilt \
        --duration "$DURATION" --no-baseline --json \
        >"$RESULTS/$workload-$target-$run.json" 2>>"$TMP/loadgen.log"; then
        log "loadgen failed for $workload/$target (run $run):"
        tail -5 "$TMP/loadgen.log" >&2
        rm -f "$RESULTS/$workload-$target-$run.json"
    fi
    stop "$TARGET_PID"
}

need_tools
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "building release binaries"
(cd "$ROOT" && cargo build --release -q -p lanrage-relay -p lanrage-bench)

read -r -a TARGETS <<<"${TARGETS:-relay naive nginx}"
read -r -a WORKLOADS <<<"${WORKLOADS:-gaming bulk}"
for run in $(seq 1 "$RUNS"); do
    for workload in "${WORKLOADS[@]}"; do
        for target in "${TARGETS[@]}"; do
            measure "$workload" "$target" "$run"
        done
    done
done

# ---- report ------------------------------------------------------------------

# One TSV line per result: workload target run pps loss% p50 p99 p999
jq -r '[input_filename, .phases.forwarded.delivered_pps, .phases.forwarded.offered_pps,
        (.phases.forwarded.loss_ratio * 100),
        .phases.forwarded.latency_us.p50, .phases.forwarded.latency_us.p99,
        .phases.forwarded.latency_us.p999] | @tsv' "$RESULTS"/*.json |
    sed -E 's#^.*/([a-z]+)-([a-z]+)-([0-9]+)\.json\t#\1\t\2\t\3\t#' |
    sort -k1,1 -k2,2 -k3,3n >"$TMP/all.tsv"

echo
# Other processes competing for the CPU show up as latency outliers and loss
# in every target; a load average near the core count means rerun.
echo "Load average before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
echo "Per run (forwarded phase; $DURATION s each; latency one-way in µs):"
printf '%-7s %-6s %4s %12s %12s %8s %9s %9s %10s\n' \
    workload target run "deliv pps" "offered pps" "loss %" p50 p99 p99.9
awk -F'\t' '{printf "%-7s %-6s %4s %12.0f %12.0f %8.3f %9.1f %9.1f %10.1f\n", $1,$2,$3,$4,$5,$6,$7,$8,$9}' "$TMP/all.tsv"

echo
echo "Medians of $RUNS runs, ratios to naive-forwarder (pps: higher is better; latency: lower is better):"
awk -F'\t' '
function median(key, col,   n, i, j, t, v) {
    n = split(vals[key, col], v, " ")
    for (i = 2; i <= n; i++) { t = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
}
{
    key = $1 SUBSEP $2
    if (!(key in seen)) { seen[key] = 1; order[++count] = key }
    for (c = 4; c <= 9; c++) vals[key, c] = vals[key, c] (vals[key, c] == "" ? "" : " ") $c
}
END {
    printf "%-7s %-6s %12s %7s %8s %9s %7s %9s %7s %10s %7s\n", "workload", "target", "deliv pps", "x naive", "loss %", "p50", "x naive", "p99", "x naive", "p99.9", "x naive"
    for (i = 1; i <= count; i++) {
        split(order[i], kt, SUBSEP)
        for (c = 4; c <= 9; c++) m[order[i], c] = median(order[i], c)
    }
    for (i = 1; i <= count; i++) {
        split(order[i], kt, SUBSEP); w = kt[1]; nk = w SUBSEP "naive"
        printf "%-7s %-6s %12.0f %7s %8.3f %9.1f %7s %9.1f %7s %10.1f %7s\n", w, kt[2],
            m[order[i], 4], ratio(m[order[i], 4], m[nk, 4]), m[order[i], 6],
            m[order[i], 7], ratio(m[order[i], 7], m[nk, 7]),
            m[order[i], 8], ratio(m[order[i], 8], m[nk, 8]),
            m[order[i], 9], ratio(m[order[i], 9], m[nk, 9])
    }
}
function ratio(a, b) { return (b + 0 > 0) ? sprintf("%.2f", a / b) : "-" }
' "$TMP/all.tsv"
[ -n "${OUT:-}" ] && log "JSON results kept in $RESULTS"
exit 0
