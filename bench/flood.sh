#!/usr/bin/env bash
# flood.sh: what a spoofed-source flood costs the relay's legitimate clients.
# For each kind in KINDS, on a fresh relay (release build, temp config,
# 127.0.0.1 only):
#   1. prints the relay's counters,
#   2. starts `lanrage-flood --kind KIND` flat out (FLOOD_RATE, default 0 =
#      as fast as possible) for DURATION seconds, from spoofed 127.0.0.0/8
#      sources through a raw socket (needs root),
#   3. LEAD_IN seconds later, runs `lanrage-loadgen` against the relay:
#      PAIRS pairs (50) of the gaming preset register, handshake through the
#      relay, and send for LOADGEN_DURATION seconds (5),
#   3b. at the same time, `lanrage-clientprobe` cycles fresh client pairs
#      for LOADGEN_DURATION seconds and times each registration (with its
#      challenge), handshake and refresh, with their success ratios,
#   4. prints the flood's JSON line, the probe's, the load generator's setup and traffic
#      results (or its error), and the relay's counters after, with deltas.
# KINDS defaults to "none register-fresh register-junk transport-miss
# initiation"; "none" is the baseline without a flood.
#
# Environment: KINDS, DURATION (10), FLOOD_RATE (0), LEAD_IN (0.5), PAIRS
# (50), LOADGEN_DURATION (5), FLOOD_ARGS (extra lanrage-flood flags for every
# kind, e.g. "--src-ip 127.0.0.1" with KINDS=register-junk), RATE_PER_SECOND
# and RATE_BURST (the relay's per-IP handshake_rate_limit; every simulated
# client shares 127.0.0.1 and costs 4 tokens at setup: default 1000 and
# 1000), RELAY_EXTRA_YAML (top-level lines appended to the relay config),
# OUT (a directory to keep the logs and JSON in; default: a temp dir,
# removed), NO_BUILD=1 (use the binaries already in
# ${CARGO_TARGET_DIR:-target}/release).
# The initiation flood registers its own victim client on 127.0.0.1 (the
# legitimate clients' IP) and spoofs that endpoint.
# Everything stays on 127.0.0.0/8; every process started here is stopped on
# exit; every wait is bounded.
set -euo pipefail

KINDS=${KINDS:-none register-fresh register-junk transport-miss initiation}
DURATION=${DURATION:-10}
FLOOD_RATE=${FLOOD_RATE:-0}
LEAD_IN=${LEAD_IN:-0.5}
PAIRS=${PAIRS:-50}
LOADGEN_DURATION=${LOADGEN_DURATION:-5}
FLOOD_ARGS=${FLOOD_ARGS:-}
RATE_PER_SECOND=${RATE_PER_SECOND:-1000}
RATE_BURST=${RATE_BURST:-1000}
SCRIPT=flood
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
BIN=$TARGET_DIR/release

if [ "$(id -u)" != 0 ]; then
    log "flood.sh needs root: lanrage-flood spoofs sources through a raw socket"
    exit 1
fi
if ! awk -v d="$DURATION" 'BEGIN { exit !(d > 0 && d <= 600) }'; then
    log "DURATION must be more than 0 and at most 600 seconds, got $DURATION"
    exit 1
fi
command -v jq >/dev/null || { log "flood.sh needs jq (apt-get install jq)"; exit 1; }

if [ "${NO_BUILD:-0}" != 1 ]; then
    log "building the relay, lanrage-flood and lanrage-loadgen (release)"
    (cd "$ROOT" && cargo build --release -q -p lanrage-relay -p lanrage-bench \
        --bin lanrage-relay --bin lanrage-flood --bin lanrage-loadgen --bin lanrage-clientprobe)
fi

# The relay's Prometheus text (HTTP/1.0 on 127.0.0.1:$1), body only; 5 s limit.
metrics() {
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1"
        printf "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
        cat <&3' _ "$1" | tr -d '\r' | sed '1,/^$/d'
}

# Waits (at most 10 s) until the relay's metrics endpoint answers.
wait_metrics() {
    local i
    for i in $(seq 1 100); do
        if metrics "$1" 2>/dev/null | grep -q '^lanrage_relay_received_total'; then return 0; fi
        sleep 0.1
    done
    log "the relay's metrics endpoint on port $1 did not answer; its log:"
    cat "$2" >&2
    return 1
}

# The kernel's count of UDP datagrams dropped for a full receive buffer.
rcvbuf_errors() {
    awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp
}

# Counters before and after, side by side: every drop reason and the
# counters a flood moves; lines where both are zero are left out.
print_counters() {
    local before=$1 after=$2
    printf '  %-62s %12s %12s %12s\n' counter before after delta
    awk '
        FNR == NR { if ($1 !~ /^#/) b[$1] = $2; next }
        $1 ~ /^#/ { next }
        $1 ~ /^lanrage_relay_(received_total|dropped_total|forwarded_total|registrations_accepted_total|challenges_sent_total|unknown_session_hints_total|cookie_replies_sent_total|socket_receive_drops_total|send_errors_total|registrations|routes|pending_handshakes)([{ ]|$)/ {
            v = b[$1] + 0
            if (v != 0 || $2 != 0) printf "  %-62s %12d %12d %12d\n", $1, v, $2, $2 - v
        }' "$before" "$after"
}

summary_rows=()

run_kind() {
    local kind=$1 dir=$RESULTS/$kind port mport key flood_pid="" loadgen_rc=0
    mkdir -p "$dir"
    port=$(free_port udp)
    mport=$(free_port tcp)
    cat >"$dir/relay.yaml" <<EOF
listen: "127.0.0.1:$port"
metrics_listen: "127.0.0.1:$mport"
private_key_file: "$dir/private.key"
log: warn
# Every simulated client shares 127.0.0.1; each pair costs 4 tokens at setup.
handshake_rate_limit: { per_second: $RATE_PER_SECOND, burst: $RATE_BURST }
${RELAY_EXTRA_YAML:-}
EOF
    key=$("$BIN/lanrage-relay" --config "$dir/relay.yaml" public-key 2>/dev/null)
    "$BIN/lanrage-relay" --config "$dir/relay.yaml" >/dev/null 2>"$dir/relay.log" &
    local relay_pid=$!
    PIDS+=("$relay_pid")
    wait_metrics "$mport" "$dir/relay.log"

    log ""
    log "=== $kind: relay 127.0.0.1:$port (metrics 127.0.0.1:$mport)"
    metrics "$mport" >"$dir/metrics-before.txt"
    local rcvbuf_before
    rcvbuf_before=$(rcvbuf_errors)

    if [ "$kind" != none ]; then
        local extra=()
        [ "$kind" = initiation ] && extra=(--src 127.0.0.1:0 --register-victim)
        # shellcheck disable=SC2086 # FLOOD_ARGS is a list of flags
        "$BIN/lanrage-flood" --kind "$kind" --relay "127.0.0.1:$port" \
            --relay-public-key "$key" --rate "$FLOOD_RATE" --duration "$DURATION" \
            "${extra[@]}" $FLOOD_ARGS >"$dir/flood.json" 2>"$dir/flood.log" &
        flood_pid=$!
        PIDS+=("$flood_pid")
        sleep "$LEAD_IN"
    fi

    timeout 300 "$BIN/lanrage-clientprobe" --relay "127.0.0.1:$port" --relay-public-key "$key" \
        --duration "$LOADGEN_DURATION" >"$dir/probe.json" 2>"$dir/probe.log" &
    local probe_pid=$!
    PIDS+=("$probe_pid")
    # --setup-timeout: a flood may slow setup down; measure it rather than
    # give up at the load generator's default (30 s + 20 ms per pair).
    timeout 300 "$BIN/lanrage-loadgen" --relay "127.0.0.1:$port" --relay-public-key "$key" \
        --preset gaming --pairs "$PAIRS" --duration "$LOADGEN_DURATION" --no-baseline --json \
        --setup-timeout 240 \
        >"$dir/loadgen.json" 2>"$dir/loadgen.log" || loadgen_rc=$?
    wait "$probe_pid" || { log "lanrage-clientprobe failed:"; cat "$dir/probe.log" >&2; return 1; }
    if [ -n "$flood_pid" ]; then
        wait "$flood_pid" || { log "lanrage-flood failed:"; cat "$dir/flood.log" >&2; return 1; }
    fi
    metrics "$mport" >"$dir/metrics-after.txt"
    local rcvbuf_after
    rcvbuf_after=$(rcvbuf_errors)
    stop "$relay_pid"

    local flood_pps="-" flood_sent="-"
    if [ "$kind" != none ]; then
        printf 'flood:   %s\n' "$(cat "$dir/flood.json")"
        flood_pps=$(jq -r '.pps | floor' "$dir/flood.json")
        flood_sent=$(jq -r '.sent' "$dir/flood.json")
    fi
    local setup="FAILED" setup_s="-" per_pair="-" loss="-" p50="-" p99="-"
    if [ "$loadgen_rc" = 0 ]; then
        setup="ok"
        setup_s=$(jq -r '.setup.seconds * 1000 | floor / 1000' "$dir/loadgen.json")
        per_pair=$(jq -r --argjson n "$PAIRS" '.setup.seconds * 1000 / $n * 100 | floor / 100' "$dir/loadgen.json")
        loss=$(jq -r '.phases.forwarded.loss_ratio' "$dir/loadgen.json")
        p50=$(jq -r '.phases.forwarded.latency_us.p50' "$dir/loadgen.json")
        p99=$(jq -r '.phases.forwarded.latency_us.p99' "$dir/loadgen.json")
        printf 'loadgen: setup ok: %s registrations, %s handshakes in %s s (%s ms per pair); forwarded %s/%s, loss %s, latency p50 %s us, p99 %s us, refreshes %s\n' \
            "$(jq -r .setup.registrations "$dir/loadgen.json")" "$(jq -r .setup.handshakes "$dir/loadgen.json")" \
            "$setup_s" "$per_pair" "$(jq -r .phases.forwarded.received "$dir/loadgen.json")" \
            "$(jq -r .phases.forwarded.sent "$dir/loadgen.json")" "$loss" "$p50" "$p99" \
            "$(jq -r .setup.refreshes "$dir/loadgen.json")"
    else
        printf 'loadgen: FAILED (exit %s): %s\n' "$loadgen_rc" "$( (grep '^error' "$dir/loadgen.log" || tail -n 1 "$dir/loadgen.log") | tail -n 1)"
    fi
    printf 'probe:   %s\n' "$(cat "$dir/probe.json")"
    local step probe_cols=""
    for step in register handshake refresh; do
        probe_cols+=$(jq -r --arg s "$step" '" \(.[$s].succeeded)/\(.[$s].attempts) \(.[$s].p50_us)/\(.[$s].p99_us)"' "$dir/probe.json")
    done
    printf 'kernel:  UDP receive-buffer drops (RcvbufErrors, whole machine) +%s\n' $((rcvbuf_after - rcvbuf_before))
    echo "relay counters:"
    print_counters "$dir/metrics-before.txt" "$dir/metrics-after.txt"
    summary_rows+=("$(printf '%-15s %10s %10s %8s %9s %11s %9s %9s %9s %s' "$kind" "$flood_sent" "$flood_pps" \
        "$setup" "$setup_s" "$per_pair" "$loss" "$p50" "$p99" "$probe_cols")")
}

for kind in $KINDS; do
    case "$kind" in
        none | register-fresh | register-junk | transport-miss | initiation) run_kind "$kind" ;;
        *) log "unknown kind $kind (none, register-fresh, register-junk, transport-miss, initiation)"; exit 1 ;;
    esac
done

echo ""
echo "summary (flood ${DURATION} s at rate ${FLOOD_RATE} (0 = max); loadgen ${PAIRS} pairs, gaming, ${LOADGEN_DURATION} s):"
printf '%-15s %10s %10s %8s %9s %11s %9s %9s %9s %s\n' kind flood_sent flood_pps setup setup_s ms_per_pair loss p50_us p99_us \
    " probe: register ok/n p50/p99_us, handshake ok/n p50/p99_us, refresh ok/n p50/p99_us"
printf '%s\n' "${summary_rows[@]}"
[ -n "${OUT:-}" ] && log "logs and JSON kept in $RESULTS"
exit 0
