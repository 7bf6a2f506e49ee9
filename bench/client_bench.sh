#!/usr/bin/env bash
# client_bench.sh: the client's numbers on one namespace topology, all
# variants side by side in one run (docs/benchmarks.md, "The client").
#
# Hosts a (10.77.0.1), b (10.77.0.2) and r (10.77.0.3) on one bridge, in
# namespaces this script makes and deletes. Variants, each carrying one
# iperf3 TCP stream a → b and a ping series between the tunnel addresses:
#   raw        the veth path, no tunnel (a → 10.77.0.2)
#   lanrage    lanrage on a and b through lanrage-relay on r (MTU 1420)
#   direct     lanrage on a and b with each other's endpoint configured
#              (listen_port 51900): straight between them, the relay idle
#   wggo       Debian's wireguard-go + wg, a ↔ b directly (MTU 1420)
#   boringtun  boringtun-cli (cargo install --locked boringtun-cli), a ↔ b directly
# RUNS times each (variants interleaved within a run), then medians. Also:
# the time from starting both lanrage clients to the first ping reply, and
# an idle lanrage client's CPU (per mille of a core) and RSS over IDLE s.
#
# PROFILE=1 records `perf` on the sending lanrage client during its first
# stream and prints the top symbols.
# Environment: RUNS (3), DURATION (iperf3 seconds, 10), IDLE (60; measured
# after IDLE_SETTLE, 35 s, once the client has gone quiet),
# VARIANTS ("raw lanrage direct wggo boringtun"), BORINGTUN (path of boringtun-cli;
# default: found on PATH or in /work/tools/bin). Needs root, iperf3,
# wireguard-go, wireguard-tools, iputils-ping, jq. Traffic stays inside the
# namespaces; every process and namespace it starts is gone on exit.
set -euo pipefail
SCRIPT=client-bench
. "$(dirname "$0")/lib.sh"

RUNS=${RUNS:-3}
DURATION=${DURATION:-10}
IDLE=${IDLE:-60}
IDLE_SETTLE=${IDLE_SETTLE:-35}
# (VARIANTS="" measures only the idle client.)
read -r -a VARIANTS <<<"${VARIANTS-raw lanrage direct wggo boringtun}"
BIN="$ROOT/target/release"
NS=lrgb$$
BORINGTUN=${BORINGTUN:-$(command -v boringtun-cli || echo /work/tools/bin/boringtun-cli)}

[ "$(id -u)" = 0 ] || { log "needs root (namespaces, TUN devices)"; exit 2; }
for tool in iperf3 wireguard-go wg ping jq; do
    command -v "$tool" >/dev/null || { log "needs $tool"; exit 2; }
done

teardown() {
    for n in a b r sw; do ip netns del "$NS-$n" 2>/dev/null || true; done
}
trap 'cleanup; teardown' EXIT

on() { local n=$1; shift; ip netns exec "$NS-$n" "$@"; }

topology() {
    ip netns add "$NS-sw"
    ip -n "$NS-sw" link add br0 type bridge
    ip -n "$NS-sw" link set br0 up
    local i=1 n
    for n in a b r; do
        ip netns add "$NS-$n"
        ip -n "$NS-$n" link set lo up
        ip -n "$NS-sw" link add "p$n" type veth peer name eth0 netns "$NS-$n"
        ip -n "$NS-sw" link set "p$n" master br0 up
        ip -n "$NS-$n" addr add "10.77.0.$i/24" dev eth0
        ip -n "$NS-$n" link set eth0 up
        i=$((i + 1))
    done
}

# ---- variants: up_X starts it and sets DST (the address to measure); down_X stops it
# (Background processes start with `ip netns exec` directly, not through
# `on`: in a function they would run in a subshell, and $! would be the
# subshell's pid, not the program's.)

up_raw() { DST=10.77.0.2; }
down_raw() { :; }

up_lanrage() { lanrage_up relay; }
up_direct() { lanrage_up direct; }
down_direct() { down_lanrage; }

lanrage_up() { # relay | direct
    local mode=$1 d=$TMP/lanrage
    rm -rf "$d"
    mkdir -p "$d"
    "$BIN/lanrage-relay" keygen >"$d/relay.key" 2>/dev/null
    chmod 600 "$d/relay.key"
    printf 'listen: "10.77.0.3:51820"\nmetrics_listen: null\nprivate_key_file: "%s"\nlog: warn\n' \
        "$d/relay.key" >"$d/relay.yaml"
    local rk ak bk
    rk=$("$BIN/lanrage-relay" --config "$d/relay.yaml" public-key 2>/dev/null)
    ip netns exec "$NS-r" "$BIN/lanrage-relay" --config "$d/relay.yaml" 2>"$d/relay.log" &
    PIDS+=($!)
    RELAY_PID=$!
    ak=$("$BIN/lanrage" keygen --key "$d/a.key" 2>/dev/null)
    bk=$("$BIN/lanrage" keygen --key "$d/b.key" 2>/dev/null)
    client_yaml() { # me address peer peer_key peer_address peer_host
        printf 'address: %s\nprivate_key_file: %s.key\ncontrol_socket: %s/%s.sock\n' "$2" "$1" "$d" "$1"
        printf 'relays: [{name: r, address: "10.77.0.3:51820", public_key: "%s"}]\n' "$rk"
        if [ "$mode" = direct ]; then
            printf 'listen_port: 51900\n'
            printf 'peers: [{name: %s, public_key: "%s", address: %s, endpoint: "%s:51900"}]\n' "$3" "$4" "$5" "$6"
        else
            # All hosts share a bridge: without this they would punch a
            # direct path, and the relay variant would measure that.
            printf 'direct_paths: false\n'
            printf 'peers: [{name: %s, public_key: "%s", address: %s}]\n' "$3" "$4" "$5"
        fi
    }
    client_yaml a 10.66.0.1 b "$bk" 10.66.0.2 10.77.0.2 >"$d/a.yaml"
    client_yaml b 10.66.0.2 a "$ak" 10.66.0.1 10.77.0.1 >"$d/b.yaml"
    sleep 0.3
    local t0
    t0=$(date +%s%N)
    ip netns exec "$NS-a" "$BIN/lanrage" --config "$d/a.yaml" up 2>"$d/a.log" &
    PIDS+=($!)
    CLIENT_A=$!
    ip netns exec "$NS-b" "$BIN/lanrage" --config "$d/b.yaml" up 2>"$d/b.log" &
    PIDS+=($!)
    CLIENT_B=$!
    local i
    for i in $(seq 1 200); do
        if on a ping -n -c 1 -W 0.05 10.66.0.2 >/dev/null 2>&1; then
            FIRST_REPLY_MS=$((($(date +%s%N) - t0) / 1000000))
            break
        fi
    done
    DST=10.66.0.2
}
down_lanrage() {
    stop "$CLIENT_A"
    stop "$CLIENT_B"
    stop "$RELAY_PID"
}

# wireguard-go and boringtun-cli speak the same UAPI, so `wg` configures both.
up_wg() { # the userspace implementation's command
    local d=$TMP/wg impl=$1
    rm -rf "$d"
    mkdir -p "$d"
    (umask 077 && wg genkey >"$d/a.key" && wg genkey >"$d/b.key")
    local n me other addr
    for n in a b; do
        if [ $n = a ]; then me=1 other=b addr=2; else me=2 other=a addr=1; fi
        # wireguard-go refuses to run on Linux (which has the kernel module)
        # unless told this; boringtun-cli ignores it.
        # The UAPI socket (/var/run/wireguard/NAME.sock) is shared by all
        # namespaces, so each host's interface has a name of its own.
        local dev=wg$$$n
        ip netns exec "$NS-$n" env WG_PROCESS_FOREGROUND=1 WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 $impl "$dev" >"$d/$n.log" 2>&1 &
        PIDS+=($!)
        for _ in $(seq 1 50); do on $n ip link show "$dev" >/dev/null 2>&1 && break; sleep 0.1; done
        on $n wg set "$dev" private-key "$d/$n.key" listen-port 51820 \
            peer "$(wg pubkey <"$d/$other.key")" endpoint "10.77.0.$addr:51820" allowed-ips "10.88.0.$addr/32"
        on $n ip addr add "10.88.0.$me/24" dev "$dev"
        on $n ip link set "$dev" mtu 1420 up
    done
    DST=10.88.0.2
}
down_wg() {
    on a ip link del "wg$$a" 2>/dev/null || true
    on b ip link del "wg$$b" 2>/dev/null || true
    sleep 0.3
}
up_wggo() { up_wg wireguard-go; }
down_wggo() { down_wg; }
up_boringtun() { up_wg "$BORINGTUN --disable-drop-privileges --foreground"; }
down_boringtun() { down_wg; }

# ---- measurement

measure() { # variant run
    local v=$1 run=$2
    "up_$v"
    on a ping -n -c 3 -W 1 "$DST" >/dev/null 2>&1 || true # warm: handshakes, ARP
    on b iperf3 -s -1 -D --logfile "$TMP/iperf-server.log" >/dev/null 2>&1
    sleep 0.3
    local perf_pid=
    if [ "${PROFILE:-0}" = 1 ] && [ "$v" = lanrage ] && [ "$run" = 1 ]; then
        # Where the sending client's time goes during the stream.
        perf record -q -g -F 999 -p "$CLIENT_A" -o "$TMP/perf.data" -- sleep "$((DURATION - 1))" \
            >/dev/null 2>&1 &
        perf_pid=$!
    fi
    on a iperf3 -c "$DST" -t "$DURATION" -J >"$RESULTS/$v-$run.iperf.json" 2>/dev/null || log "iperf3 failed for $v"
    if [ -n "$perf_pid" ]; then
        wait "$perf_pid" || true
        {
            echo "by library:"
            perf report -i "$TMP/perf.data" --stdio --no-children --sort dso 2>/dev/null |
                grep -E '^ +[0-9]' | head -6
            echo "by symbol:"
            perf report -i "$TMP/perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null |
                grep -E '^ +[0-9]' | head -20
        } | sed -E 's/ +- +- +$//' >"$TMP/profile.txt" || true
    fi
    on a ping -n -c 200 -i 0.01 -W 1 "$DST" >"$RESULTS/$v-$run.ping.txt" 2>&1 || true
    "down_$v"
}

idle_client() { # the lanrage variant must be up
    local pid=$CLIENT_A ticks hz rss
    hz=$(getconf CLK_TCK)
    # The first ping made the peer active: wait until the client has gone
    # quiet (docs/client.md: 30 s without a packet), then measure.
    sleep "$IDLE_SETTLE"
    read_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
    ticks=$(read_ticks)
    sleep "$IDLE"
    ticks=$(($(read_ticks) - ticks))
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    echo "$ticks $hz $rss"
}

log "building release binaries"
(cd "$ROOT" && cargo build --release -q -p lanrage-relay -p lanrage-client)
[ -x "${BORINGTUN%% *}" ] || { log "boringtun-cli not found (cargo install --locked boringtun-cli); skipping it"; VARIANTS=("${VARIANTS[@]/boringtun/}"); }
topology
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
FIRSTS=()
for run in $(seq 1 "$RUNS"); do
    for v in "${VARIANTS[@]}"; do
        [ -n "$v" ] || continue
        log "run $run/$RUNS: $v"
        FIRST_REPLY_MS=
        measure "$v" "$run"
        [ "$v" = lanrage ] && [ -n "$FIRST_REPLY_MS" ] && FIRSTS+=("$FIRST_REPLY_MS")
    done
done
log "idle lanrage client for $IDLE s"
up_lanrage
read -r IDLE_TICKS HZ RSS_KB < <(idle_client)
down_lanrage

# ---- report

median() { sort -n | awk '{v[NR]=$1} END {if (NR == 0) print "-"; else print v[int((NR+1)/2)]}'; }
echo
echo "Load average before: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores"
printf '%-10s %14s %10s %10s   (medians of %s runs; iperf3 %s s, one TCP stream; 200 pings at 100/s)\n' \
    variant "TCP Mb/s" "ping p50" "ping p99" "$RUNS" "$DURATION"
for v in "${VARIANTS[@]}"; do
    [ -n "$v" ] || continue
    mbps=$(for f in "$RESULTS/$v"-*.iperf.json; do
        jq -r '(.end.sum_received.bits_per_second // 0) / 1e6' "$f" 2>/dev/null
    done | median)
    p50=$(for f in "$RESULTS/$v"-*.ping.txt; do
        grep -o 'time=[0-9.]*' "$f" | cut -d= -f2 | sort -n | awk '{v[NR]=$1} END {print v[int(NR*0.5)+0]}'
    done | median)
    p99=$(for f in "$RESULTS/$v"-*.ping.txt; do
        grep -o 'time=[0-9.]*' "$f" | cut -d= -f2 | sort -n | awk '{v[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; print v[i]}'
    done | median)
    printf '%-10s %14.0f %8s ms %8s ms\n' "$v" "$mbps" "$p50" "$p99"
done
echo
[ "${#FIRSTS[@]}" -gt 0 ] &&
    echo "lanrage: first ping reply after starting both clients: $(printf '%s\n' "${FIRSTS[@]}" | median) ms (median of ${#FIRSTS[@]})"
if [ -s "$TMP/profile.txt" ]; then
    echo
    echo "perf, the sending lanrage client during its first stream (self time, by library and symbol):"
    cat "$TMP/profile.txt"
fi
awk -v t="$IDLE_TICKS" -v hz="$HZ" -v s="$IDLE" -v rss="$RSS_KB" \
    'BEGIN {printf "lanrage idle over %d s: %.2f per mille of a core, RSS %.1f MB\n", s, 1000 * t / hz / s, rss / 1024}'
