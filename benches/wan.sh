#!/usr/bin/env bash
# WAN run of replication: one active domsyncd in network namespace ds-wan-a, one standby in
# ds-wan-b, joined by a veth pair (10.231.0.1/30 <-> 10.231.0.2/30, only inside the two
# namespaces; loopback up in each). Measured for each condition (WAN_CONDITIONS):
#   install  a WAN_PACKAGE_MIB (64) MiB policy package installed on the active, from the start
#            of the install to the standby's applied position reaching it (MB/s), WAN_INSTALL_RUNS
#            (3) times, each given up after WAN_INSTALL_WAIT (180) s
#   lag      replication lag p50/p99 at WAN_LAG_RATE (1000) writes/s for WAN_LAG_SECS (20) s
#   resync   full resync of a WAN_RESYNC_MIB (1024) MiB domain to an empty standby
# Conditions: `veth` (the veth pair as is) and `wan` (WAN_DELAY_MS=50 ms one way on each side,
# so 100 ms round trip, and WAN_LOSS=0.5 % loss in each direction, so about 1 % per round
# trip). The impairment is `tc qdisc replace dev <veth end> root netem delay 50ms loss 0.5%` on
# both ends; on kernels without sch_netem (tc says "Specified qdisc kind is unknown") the
# same delay and loss are applied by domsync-wan-relay, a UDP relay in each namespace that the
# peer addresses point at (WAN_IMPAIR=netem|relay forces one). Everything is removed on exit.
#
# Needs root. Builds the release binaries unless WAN_BIN_DIR names a directory holding domsync,
# domsyncd, domsync-bench and domsync-wan-relay. Not part of any test suite; takes minutes
# (the 1 GiB fills and resyncs alone take several minutes: WAN_RESYNC_MIB=64 for a quick run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

WAN_RESYNC_MIB="${WAN_RESYNC_MIB:-1024}"
WAN_PACKAGE_MIB="${WAN_PACKAGE_MIB:-64}"
WAN_INSTALL_RUNS="${WAN_INSTALL_RUNS:-3}"
WAN_INSTALL_WAIT="${WAN_INSTALL_WAIT:-180}"
WAN_LAG_SECS="${WAN_LAG_SECS:-20}"
WAN_LAG_RATE="${WAN_LAG_RATE:-1000}"
WAN_DELAY_MS="${WAN_DELAY_MS:-50}"
WAN_LOSS="${WAN_LOSS:-0.5}"
WAN_IMPAIR="${WAN_IMPAIR:-auto}"
WAN_CONDITIONS="${WAN_CONDITIONS:-veth wan}"
WAN_BIN_DIR="${WAN_BIN_DIR:-}"
WAN_KEEP="${WAN_KEEP:-}"

NS_A=ds-wan-a
NS_B=ds-wan-b
IF_A=dswan-a
IF_B=dswan-b
ADDR_A=10.231.0.1
ADDR_B=10.231.0.2
PORT=7400
RELAY_PORT=7401

say() { echo "wan.sh: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

[ "$(id -u)" = 0 ] || die "run as root: it creates network namespaces ($NS_A, $NS_B)"
case "$WAN_IMPAIR" in auto | netem | relay) ;; *) die "WAN_IMPAIR is netem, relay or auto, not $WAN_IMPAIR" ;; esac
if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    say "installing iproute2"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y iproute2
fi
command -v jq >/dev/null || {
    say "installing jq"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y jq
}

if [ -z "$WAN_BIN_DIR" ]; then
    (cd "$root" && cargo build --release -p domsync -p domsync-bench --bins)
    WAN_BIN_DIR="${CARGO_TARGET_DIR:-$root/target}/release"
fi
for b in domsync domsyncd domsync-bench domsync-wan-relay; do
    [ -x "$WAN_BIN_DIR/$b" ] || die "no $WAN_BIN_DIR/$b: build with cargo build --release -p domsync -p domsync-bench --bins"
done

work="$(mktemp -d /tmp/ds-wan.XXXXXX)"
pids=()

stop_all() {
    local p
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    pids=()
}

cleanup() {
    stop_all
    ip netns del "$NS_A" 2>/dev/null || true
    ip netns del "$NS_B" 2>/dev/null || true
    if [ -n "$WAN_KEEP" ]; then
        say "files kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the two sites -------------------------------------------------------------------------
ip netns del "$NS_A" 2>/dev/null || true
ip netns del "$NS_B" 2>/dev/null || true
ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add "$IF_A" netns "$NS_A" type veth peer name "$IF_B" netns "$NS_B"
ip -n "$NS_A" addr add "$ADDR_A/30" dev "$IF_A"
ip -n "$NS_B" addr add "$ADDR_B/30" dev "$IF_B"
for ns in "$NS_A" "$NS_B"; do
    ip -n "$ns" link set lo up
done
ip -n "$NS_A" link set "$IF_A" up
ip -n "$NS_B" link set "$IF_B" up

impair="$WAN_IMPAIR"
if [ "$impair" = auto ]; then
    if tc -n "$NS_A" qdisc replace dev "$IF_A" root netem delay 1ms 2>/dev/null; then
        impair=netem
        tc -n "$NS_A" qdisc del dev "$IF_A" root
    else
        impair=relay
        say "tc netem is not available on this kernel: delay and loss by domsync-wan-relay"
    fi
fi

"$WAN_BIN_DIR/domsync" pki init --dir "$work/pki" >/dev/null
for id in a b; do
    "$WAN_BIN_DIR/domsync" pki issue --role node --id "$id" --dir "$work/pki" >/dev/null
done

# config ID STATE_DIR LISTEN PEER_ID PEER_ADDR DOMAIN [RETENTION_BYTES]
config() {
    local id="$1" state="$2" listen="$3" peer="$4" peer_addr="$5" domain="$6" retention="${7:-}"
    cat <<EOF
[node]
id = "$id"
state_dir = "$state"
listen = "$listen"
admin_socket = "$work/$id.sock"

[tls]
ca = "$work/pki/ca.pem"
cert = "$work/pki/node-$id.pem"
key = "$work/pki/node-$id.key"

[apps]
socket = "$work/$id-app.sock"

[[peers]]
id = "$peer"
address = "$peer_addr"

[[domains]]
name = "$domain"
replicas = ["a", "b"]
durability = "local"
EOF
    if [ -n "$retention" ]; then
        echo "retention_bytes = $retention"
    fi
}

declare -A pid_of
# start NS ID: the daemon of node ID (config in $work/ID.toml) in namespace NS.
start() {
    ip netns exec "$1" "$WAN_BIN_DIR/domsyncd" --config "$work/$2.toml" >>"$work/$2.log" 2>&1 &
    pids+=("$!")
    pid_of[$2]=$!
}

# wait_synced DOMAIN: until the standby b reports the domain Synchronized (2 minutes at most).
wait_synced() {
    local i
    for ((i = 0; i < 1200; i++)); do
        if "$WAN_BIN_DIR/domsync" --socket "$work/b.sock" status --json 2>/dev/null |
            jq -e --arg d "$1" '.domains[] | select(.domain == $d) | .follower.sync_status.name == "Synchronized"' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    die "standby b did not synchronize domain $1 within 2 minutes (logs: $work/a.log, $work/b.log)"
}

# impairment on|off for the current condition; sets peer_of_a / peer_of_b.
set_link() {
    local cond="$1"
    peer_of_a="$ADDR_B:$PORT"
    peer_of_b="$ADDR_A:$PORT"
    if [ "$cond" = veth ]; then
        return
    fi
    if [ "$impair" = netem ]; then
        tc -n "$NS_A" qdisc replace dev "$IF_A" root netem delay "${WAN_DELAY_MS}ms" loss "${WAN_LOSS}%"
        tc -n "$NS_B" qdisc replace dev "$IF_B" root netem delay "${WAN_DELAY_MS}ms" loss "${WAN_LOSS}%"
    else
        # Each node reaches its peer through a relay in its own namespace; the relay adds the
        # delay and loss in both directions, so the two relays together stand for netem on both ends.
        ip netns exec "$NS_A" "$WAN_BIN_DIR/domsync-wan-relay" --listen "127.0.0.1:$RELAY_PORT" \
            --upstream "$ADDR_B:$PORT" --delay-ms "$WAN_DELAY_MS" --loss "$WAN_LOSS" \
            --report-secs 10 >>"$work/relay-a.log" 2>&1 &
        pids+=("$!")
        ip netns exec "$NS_B" "$WAN_BIN_DIR/domsync-wan-relay" --listen "127.0.0.1:$RELAY_PORT" \
            --upstream "$ADDR_A:$PORT" --delay-ms "$WAN_DELAY_MS" --loss "$WAN_LOSS" \
            --report-secs 10 >>"$work/relay-b.log" 2>&1 &
        pids+=("$!")
        peer_of_a="127.0.0.1:$RELAY_PORT"
        peer_of_b="127.0.0.1:$RELAY_PORT"
    fi
}

clear_link() {
    tc -n "$NS_A" qdisc del dev "$IF_A" root 2>/dev/null || true
    tc -n "$NS_B" qdisc del dev "$IF_B" root 2>/dev/null || true
    stop_all
}

# pair DOMAIN [RETENTION]: fresh state, both daemons started, b synchronized.
pair() {
    rm -rf "$work/a" "$work/b" "$work"/*.sock
    config a "$work/a" "$ADDR_A:$PORT" b "$peer_of_a" "$1" "${2:-}" >"$work/a.toml"
    config b "$work/b" "$ADDR_B:$PORT" a "$peer_of_b" "$1" "${2:-}" >"$work/b.toml"
    start "$NS_A" a
    start "$NS_B" b
    wait_synced "$1"
}

# bench ARGS...: domsync-bench with --json, in the background so that a signal reaches the trap.
bench() {
    "$WAN_BIN_DIR/domsync-bench" "$@" --json &
    pids+=("$!")
    wait "$!"
}

declare -A result
for cond in $WAN_CONDITIONS; do
    case "$cond" in veth | wan) ;; *) die "WAN_CONDITIONS takes veth and wan, not $cond" ;; esac
    say "== $cond: install"
    set_link "$cond"
    pair wanbench
    bench install --socket "$work/a.sock" --standby-socket "$work/b.sock" --domain wanbench \
        --value-size "${WAN_PACKAGE_MIB}MiB" --runs "$WAN_INSTALL_RUNS" --duration "$WAN_INSTALL_WAIT" \
        >"$work/$cond-install.json" || true
    # A fresh pair: a package the standby never got would hold the lag's records behind it.
    clear_link
    set_link "$cond"
    pair wanlag
    bench lag --socket "$work/a.sock" --standby-socket "$work/b.sock" --domain wanlag \
        --rate "$WAN_LAG_RATE" --duration "$WAN_LAG_SECS" --concurrency 32 >"$work/$cond-lag.json"
    clear_link

    say "== $cond: resync of $WAN_RESYNC_MIB MiB"
    set_link "$cond"
    # A 4 MiB log: the empty standby gets a snapshot, as a large domain would.
    pair wanresync $((4 << 20))
    kill "${pid_of[b]}"
    wait "${pid_of[b]}" 2>/dev/null || true
    rm -rf "$work/b" "$work/go"
    bench resync --socket "$work/a.sock" --standby-socket "$work/b.sock" --domain wanresync \
        --size "${WAN_RESYNC_MIB}MiB" --go-file "$work/go" >"$work/$cond-resync.json" &
    filler=$!
    pids+=("$filler")
    while [ ! -e "$work/go" ]; do
        kill -0 "$filler" 2>/dev/null || die "the resync bench stopped before filling (see above)"
        sleep 0.01
    done
    start "$NS_B" b
    wait "$filler" || die "the resync bench failed (logs: $work/a.log, $work/b.log)"
    clear_link

    result[$cond, install]="$(jq -r 'if .ops == 0 then "not applied within \(.params.duration) s" else "\(.bytes_per_sec / 1e6 | . * 100 | round / 100) MB/s (p50 \(.latency_ms.p50 / 1000 | . * 100 | round / 100) s per package, \(.ops) of \(.params.runs))" end' "$work/$cond-install.json")"
    result[$cond, lag]="$(jq -r '"p50 \(.latency_ms.p50 | . * 10 | round / 10) ms, p99 \(.latency_ms.p99 | . * 10 | round / 10) ms (\(.params.achieved_rate | round) writes/s)"' "$work/$cond-lag.json")"
    result[$cond, resync]="$(jq -r '"\(.seconds | . * 10 | round / 10) s (\(.bytes_per_sec / 1e6 | . * 100 | round / 100) MB/s)"' "$work/$cond-resync.json")"
    for f in install lag resync; do
        say "$cond $f: ${result[$cond, $f]}"
    done
done

echo
echo "WAN run: impairment ${impair} (delay ${WAN_DELAY_MS} ms and loss ${WAN_LOSS} % in each direction on the wan condition)"
printf '%-30s' "figure"
for cond in $WAN_CONDITIONS; do printf '%-52s' "$cond"; done
echo
for f in install lag resync; do
    case "$f" in
        install) label="install ${WAN_PACKAGE_MIB} MiB package" ;;
        lag) label="lag at ${WAN_LAG_RATE} writes/s" ;;
        resync) label="resync ${WAN_RESYNC_MIB} MiB" ;;
    esac
    printf '%-30s' "$label"
    for cond in $WAN_CONDITIONS; do printf '%-52s' "${result[$cond, $f]}"; done
    echo
done
if [ -n "$WAN_KEEP" ]; then
    say "JSON reports and daemon logs in $work"
fi
