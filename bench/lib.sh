# bench/lib.sh: what bench/compare.sh and bench/flood.sh share. Each sources
# it first thing after `set -euo pipefail`, with SCRIPT set to its name:
#
#     SCRIPT=compare
#     . "$(dirname "$0")/lib.sh"
#
# It sets ROOT (the repository), TMP (a scratch directory removed on exit),
# RESULTS ($OUT, or $TMP/results) and PIDS (append every background process;
# all are stopped on exit), and defines log, free_port and stop.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TMP=$(mktemp -d -t "lanrage-$SCRIPT.XXXXXX")
RESULTS=${OUT:-$TMP/results}
mkdir -p "$RESULTS"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }

# A loopback port that was free a moment ago (udp or tcp).
free_port() {
    python3 - "$1" <<'EOF'
import socket, sys
kind = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

# Stops process $1 (one this script started) and reaps it.
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
