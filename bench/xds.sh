#!/usr/bin/env bash
# bench/xds.sh - issue 4's xDS scale benchmark, everything on 127.0.0.1.
#
# ferry-control serves a generated snapshot (bench/xds_gen.py: by default
# 10,000 routes in 1,000 virtual hosts, 1,000 EDS clusters, 20,000 endpoints)
# and the script measures:
#   1. propagation: ferry-proxy (--concurrency 1) connected and ACKed; the
#      snapshot file is rewritten (temp + rename) with a change, alternately an
#      RDS change (the probe route's cluster) and an EDS change (the probe
#      clusters' endpoints swapped); a probe GETs through the proxy every 1 ms
#      until the other backend answers. Time from ferry-control's
#      "snapshot file reloaded" log line to the first response from the new
#      backend (and the steps in between, from the logs of both sides).
#   2. RSS: ferry-proxy's VmRSS holding the config vs Envoy 1.40's
#      (--concurrency 1), both fed by the same ferry-control, one after the
#      other on the same listener port. Envoy also gets the propagation test.
#   3. push time: N (100) ferry-proxy processes connected (node ids fan-0..),
#      one RDS and one EDS change, time from ferry-control publishing the
#      snapshot to the last response sent and the last ACK received, and
#      ferry-control's RSS and CPU.
# See bench/README.md ("xDS scale benchmark").
#
# Usage: bench/xds.sh [--routes N] [--clusters N] [--endpoints N] [--proxies N]
#                     [--changes N] [--fanout-changes N] [--phases ferry,envoy,fanout]
#                     [--no-build] [--json PATH] [--keep]
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$BENCH_DIR/.." && pwd)"
PY="$BENCH_DIR/xds_bench.py"
GEN="$BENCH_DIR/xds_gen.py"
CACHE_DIR="${FERRY_BENCH_CACHE:-$HOME/.cache/ferry-bench}"
export PATH="$PATH:/usr/sbin:/sbin"

PORT_BASE="${FERRY_XDS_BENCH_PORT_BASE:-28000}"
XDS_PORT=$((PORT_BASE + 0))
API_PORT=$((PORT_BASE + 1))
LISTEN_PORT=$((PORT_BASE + 10))      # the snapshot's listener
FERRY_ADMIN_PORT=$((PORT_BASE + 20))
ENVOY_ADMIN_PORT=$((PORT_BASE + 21))
PROBE_A_BASE=$((PORT_BASE + 100))    # backend A: up to 50 ports
PROBE_B_BASE=$((PORT_BASE + 150))    # backend B: up to 50 ports
FAN_ADMIN_BASE=$((PORT_BASE + 1000)) # fan-out proxies' admin ports

PROXY_CPU=0   # the proxy under test
SIDE_CPU=1    # ferry-control, backend, probe

ROUTES=10000
CLUSTERS=1000
ENDPOINTS=20000
PROXIES=100
CHANGES=6
FANOUT_CHANGES=2
PHASES="ferry,envoy,fanout"
BUILD=1
JSON_OUT=""
KEEP=0
ACK_TIMEOUT=300
MEM_PCT="${FERRY_XDS_BENCH_MEM_PCT:-65}"   # share of MemAvailable the fan-out may use

RUN_DIR=""
PIDS=()
LAST_PID=""
PIN=1

log() { printf '[xds-bench] %s\n' "$*" >&2; }
die() { printf '[xds-bench] error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: bench/xds.sh [options]

  --routes N          routes in the snapshot (default $ROUTES; 10 per virtual host)
  --clusters N        EDS clusters (default $CLUSTERS)
  --endpoints N       endpoints, spread evenly over the clusters (default $ENDPOINTS)
  --proxies N         ferry-proxy processes for the push test (default $PROXIES;
                      fewer if the machine's memory does not fit them)
  --changes N         snapshot changes per proxy in the propagation test (default $CHANGES)
  --fanout-changes N  changes pushed to all proxies (default $FANOUT_CHANGES)
  --phases LIST       ferry,envoy,fanout (default all)
  --ack-timeout S     bound on every wait for ACKs (default $ACK_TIMEOUT)
  --no-build          do not build; use the existing binaries
  --json PATH         also write the results as JSON
  --keep              keep the temp dir (snapshot, configs, logs)

Environment: FERRY_BENCH_CACHE (Envoy, default \$HOME/.cache/ferry-bench; bench/run.sh
--setup-only installs it), FERRY_XDS_BENCH_PORT_BASE (default 28000),
FERRY_XDS_BENCH_MEM_PCT (default 65: the share of MemAvailable the fan-out proxies may use),
FERRY_BENCH_FERRY_BIN / FERRY_BENCH_CONTROL_BIN (use these binaries, no build).
EOF
}

parse_args() {
    while (($#)); do
        case $1 in
            --routes) ROUTES=${2:?}; shift 2 ;;
            --clusters) CLUSTERS=${2:?}; shift 2 ;;
            --endpoints) ENDPOINTS=${2:?}; shift 2 ;;
            --proxies) PROXIES=${2:?}; shift 2 ;;
            --changes) CHANGES=${2:?}; shift 2 ;;
            --fanout-changes) FANOUT_CHANGES=${2:?}; shift 2 ;;
            --phases) PHASES=${2:?}; shift 2 ;;
            --ack-timeout) ACK_TIMEOUT=${2:?}; shift 2 ;;
            --no-build) BUILD=0; shift ;;
            --json) JSON_OUT=${2:?}; shift 2 ;;
            --keep) KEEP=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
    done
    local n
    for n in "$ROUTES" "$CLUSTERS" "$ENDPOINTS" "$PROXIES" "$CHANGES" "$FANOUT_CHANGES" "$ACK_TIMEOUT" \
        "$MEM_PCT"; do
        [[ $n =~ ^[0-9]+$ ]] || die "not a whole number: $n"
    done
    ((CLUSTERS >= 2 && ROUTES >= 10 && ENDPOINTS >= CLUSTERS)) ||
        die "need --clusters >= 2, --routes >= 10, --endpoints >= --clusters"
    ((PROXIES <= 1000)) || die "--proxies at most 1000"
    local p
    for p in ${PHASES//,/ }; do
        case $p in ferry | envoy | fanout) ;; *) die "unknown phase '$p'" ;; esac
    done
    if [[ -n $JSON_OUT && $JSON_OUT != /* ]]; then JSON_OUT="$PWD/$JSON_OUT"; fi
}

has_phase() { [[ ,$PHASES, == *,$1,* ]]; }

# ------------------------------------------------------------------ binaries

# newer_sources BIN DIR...: true if a source file under DIR is newer than BIN.
newer_sources() {
    local bin=$1
    shift
    [[ -n $(find "$@" \( -name '*.rs' -o -name Cargo.toml -o -name '*.proto' \) \
        -newer "$bin" -print -quit 2>/dev/null) ]]
}

# release_or_debug NAME: target/release/NAME if it exists, else target/debug/NAME.
release_or_debug() {
    local b
    for b in "$ROOT_DIR/target/release/$1" "$ROOT_DIR/target/debug/$1"; do
        [[ -x $b ]] && { echo "$b"; return; }
    done
}

BIN_NOTE=""
pick_binaries() {
    local rel="$ROOT_DIR/target/release"
    local srcs=("$ROOT_DIR/proxy" "$ROOT_DIR/xds-client" "$ROOT_DIR/filters" "$ROOT_DIR/control-plane"
        "$ROOT_DIR/Cargo.toml")
    if [[ -n ${FERRY_BENCH_FERRY_BIN:-} || -n ${FERRY_BENCH_CONTROL_BIN:-} ]]; then BUILD=0; fi
    if ((BUILD)); then
        if [[ ! -x $rel/ferry-proxy || ! -x $rel/ferry-control ]] ||
            newer_sources "$rel/ferry-proxy" "${srcs[@]}" ||
            newer_sources "$rel/ferry-control" "${srcs[@]}"; then
            log "cargo build --release -p ferry-proxy -p ferry-control-plane"
            if ! (cd "$ROOT_DIR" && timeout 3600 cargo build --release -p ferry-proxy \
                -p ferry-control-plane) >&2; then
                log "the build failed (sources being edited?); using the newest existing binaries"
                BIN_NOTE="build failed; "
            fi
        fi
    fi
    # The release build when there is one (fresh, or the last that compiled);
    # a debug build only when no release binary exists (flagged below).
    FERRY_BIN=${FERRY_BENCH_FERRY_BIN:-$(release_or_debug ferry-proxy)}
    CONTROL_BIN=${FERRY_BENCH_CONTROL_BIN:-$(release_or_debug ferry-control)}
    [[ -n $FERRY_BIN && -x $FERRY_BIN ]] || die "no ferry-proxy binary"
    [[ -n $CONTROL_BIN && -x $CONTROL_BIN ]] || die "no ferry-control binary"
    local b
    for b in "$FERRY_BIN" "$CONTROL_BIN"; do
        [[ $b == */debug/* ]] && log "warning: $b is a DEBUG build"
    done
    BIN_NOTE+="ferry-proxy $FERRY_BIN ($(date -r "$FERRY_BIN" '+%F %T')); "
    BIN_NOTE+="ferry-control $CONTROL_BIN ($(date -r "$CONTROL_BIN" '+%F %T'))"
    log "$BIN_NOTE"
}

pick_envoy() {
    ENVOY_BIN="$CACHE_DIR/bin/envoy"
    if [[ ! -x $ENVOY_BIN ]]; then
        log "Envoy missing: bench/run.sh --setup-only"
        "$BENCH_DIR/run.sh" --setup-only >&2 || die "Envoy set-up failed"
    fi
    [[ -x $ENVOY_BIN ]] || die "no Envoy at $ENVOY_BIN"
}

# -------------------------------------------------------------- processes

alive() {
    local st
    st=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

tree() {
    alive "$1" || return 0
    echo "$1"
    local c
    for c in $(pgrep -P "$1" || true); do tree "$c"; done
}

# spawn NAME CPU CMD...: background, pinned to CPU (empty: not pinned),
# output in RUN_DIR/NAME.log; LAST_PID is the program itself (exec chain).
spawn() {
    local name=$1 cpu=$2
    shift 2
    local cmd=("$@")
    if ((PIN)) && [[ -n $cpu ]]; then cmd=(taskset -c "$cpu" "${cmd[@]}"); fi
    "${cmd[@]}" >"$RUN_DIR/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

forget() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# stop PID...: TERM every tree at once, wait up to 10 s, KILL what is left.
stop() {
    local all=() p i any
    for p in "$@"; do mapfile -t -O "${#all[@]}" all < <(tree "$p"); done
    if ((${#all[@]})); then
        kill -TERM "${all[@]}" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            any=0
            for p in "${all[@]}"; do alive "$p" && { any=1; break; }; done
            ((any)) || break
            sleep 0.1
        done
        for p in "${all[@]}"; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
    fi
    for p in "$@"; do wait "$p" 2>/dev/null || true; forget "$p"; done
}

cleanup() {
    ((${#PIDS[@]})) && stop "${PIDS[@]}"
    if [[ -n $RUN_DIR && -d $RUN_DIR ]]; then
        if ((KEEP)); then log "kept $RUN_DIR"; else rm -rf "$RUN_DIR"; fi
    fi
}

# waited CMD...: run CMD in the background and wait for it, so that a signal
# reaches the trap at once (bash runs a trap only between foreground commands).
waited() {
    local p rc=0
    "$@" &
    p=$!
    PIDS+=("$p")
    wait "$p" || rc=$?
    forget "$p"
    return "$rc"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_http NAME PID URL SECONDS: poll URL until 2xx; fail if PID dies.
wait_http() {
    local name=$1 pid=$2 url=$3 limit=$4 deadline
    deadline=$((SECONDS + limit))
    while ((SECONDS < deadline)); do
        alive "$pid" || { tail -n 30 "$RUN_DIR/$name.log" >&2; die "$name exited"; }
        curl -sf --max-time 2 -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.2
    done
    tail -n 30 "$RUN_DIR/$name.log" >&2
    die "$name: $url not ready within ${limit}s"
}

status_kib() {
    local field=$1 p k sum=0
    shift
    for p in "$@"; do
        k=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null) || continue
        sum=$((sum + ${k:-0}))
    done
    echo "$sum"
}

cpu_s() {
    local p t sum=0
    for p in "$@"; do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || continue
        sum=$((sum + ${t:-0}))
    done
    awk -v t="$sum" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

now() { date +%s.%N; }

# --------------------------------------------------------------- set-up

PER_CLUSTER=0
ports_csv() { # ports_csv BASE COUNT
    local i out=()
    for ((i = 0; i < $2; i++)); do out+=($(($1 + i))); done
    local IFS=,
    echo "${out[*]}"
}

write_backend() {
    # Backend A answers "a", backend B "b": one nginx, one worker, every
    # probe-cluster endpoint a port of its own.
    local n=$PER_CLUSTER i
    ((n > 50)) && n=50
    PROBE_A_PORTS=$(ports_csv "$PROBE_A_BASE" "$n")
    PROBE_B_PORTS=$(ports_csv "$PROBE_B_BASE" "$n")
    {
        echo "worker_processes 1; daemon off; pid $RUN_DIR/backend.pid;"
        echo "error_log $RUN_DIR/backend.error.log warn;"
        echo "events { worker_connections 4096; }"
        echo "http { access_log off; keepalive_timeout 300s;"
        echo "  server {"
        for ((i = 0; i < n; i++)); do echo "    listen 127.0.0.1:$((PROBE_A_BASE + i));"; done
        echo "    location / { default_type text/plain; return 200 \"a\"; } }"
        echo "  server {"
        for ((i = 0; i < n; i++)); do echo "    listen 127.0.0.1:$((PROBE_B_BASE + i));"; done
        echo "    location / { default_type text/plain; return 200 \"b\"; } }"
        echo "}"
    } >"$RUN_DIR/backend.conf"
}

write_envoy() {
    cat >"$RUN_DIR/envoy.yaml" <<EOF
node: {id: envoy-0, cluster: bench}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $ENVOY_ADMIN_PORT}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{envoy_grpc: {cluster_name: xds_cluster}}]
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
    - name: xds_cluster
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {http2_protocol_options: {}}
      load_assignment:
        cluster_name: xds_cluster
        endpoints:
          - lb_endpoints:
              - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $XDS_PORT}}}
EOF
}

gen_common() {
    echo --routes "$ROUTES" --clusters "$CLUSTERS" --endpoints "$ENDPOINTS" \
        --listen-port "$LISTEN_PORT" --probe-a-ports "$PROBE_A_PORTS" \
        --probe-b-ports "$PROBE_B_PORTS"
}

STEP=0   # snapshot steps written so far (xds_gen.py --step)
SNAP=""
RESULTS=""

save() { # save KEY JSON
    python3 - "$RESULTS" "$1" "$2" <<'EOF'
import json, os, sys
path, key, val = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
try:
    d = json.load(open(path))
except FileNotFoundError:
    d = {}
d[key] = val
json.dump(d, open(path + ".tmp", "w"), indent=1)
os.rename(path + ".tmp", path)
EOF
}

start_control() {
    # shellcheck disable=SC2046
    python3 "$GEN" $(gen_common) --step 0 --out "$SNAP" >"$RUN_DIR/gen0.json"
    log "snapshot: $(cat "$RUN_DIR/gen0.json")"
    spawn control "$SIDE_CPU" env -u RUST_LOG "$CONTROL_BIN" serve --xds-snapshot "$SNAP" \
        --xds-listen "127.0.0.1:$XDS_PORT" --api-listen "127.0.0.1:$API_PORT" \
        --log "info,ferry_control_plane::xds::cache=debug"
    CONTROL_PID=$LAST_PID
    local t0=$SECONDS
    wait_http control "$CONTROL_PID" "http://127.0.0.1:$API_PORT/healthz" 120
    log "ferry-control up in $((SECONDS - t0)) s: RSS $(($(status_kib VmRSS "$CONTROL_PID") / 1024)) MiB"
}

API="http://127.0.0.1:$API_PORT"

# proxy_phase ferry|envoy: start the proxy, wait for its ACK of every type
# and for the probe to be served, read RSS, run the propagation changes,
# read RSS again, stop it.
proxy_phase() {
    local who=$1 pid node t0 t1 rss hwm rss_after cpu_init expect
    if [[ $who == ferry ]]; then
        node=ferry-0
        t0=$(now)
        spawn ferry "$PROXY_CPU" "$FERRY_BIN" --xds "http://127.0.0.1:$XDS_PORT" \
            --node-id "$node" --node-cluster bench --admin "127.0.0.1:$FERRY_ADMIN_PORT" \
            --concurrency 1 --log-level info
    else
        node=envoy-0
        t0=$(now)
        spawn envoy "$PROXY_CPU" "$ENVOY_BIN" -c "$RUN_DIR/envoy.yaml" --concurrency 1 \
            --disable-hot-restart --log-level warn
    fi
    pid=$LAST_PID
    log "$who: started (pid $pid); waiting for its ACK of cds, eds, lds, rds"
    waited timeout -k 5 "$((ACK_TIMEOUT + 10))" python3 "$PY" wait-acked --api "$API" --nodes "$node" \
        --timeout "$ACK_TIMEOUT" --pids "$pid" >"$RUN_DIR/$who.acked.json" ||
        { tail -n 20 "$RUN_DIR/$who.log" >&2; die "$who did not ACK"; }
    t1=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["all_acked_at"])' \
        "$RUN_DIR/$who.acked.json")
    local tp=()
    mapfile -t tp < <(tree "$pid")
    cpu_init=$(cpu_s "${tp[@]}")
    expect=$(python3 -B -c "import sys; sys.path.insert(0, '$BENCH_DIR'); import xds_gen; print(xds_gen.expected_backend($STEP))")
    waited timeout -k 5 70 python3 "$PY" probe --port "$LISTEN_PORT" --expect "$expect" --timeout 60 \
        >"$RUN_DIR/$who.probe.json" || { tail -n 20 "$RUN_DIR/$who.log" >&2; die "$who does not serve"; }
    alive "$pid" || die "$who exited"
    sleep 2
    rss=$(status_kib VmRSS "${tp[@]}")
    log "$who: ACKed $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s after start," \
        "RSS $((rss / 1024)) MiB, $cpu_init CPU s"
    if ((CHANGES > 0)); then
        # shellcheck disable=SC2046
        waited timeout -k 5 $((CHANGES * (2 * ACK_TIMEOUT + 10) + 30)) python3 "$PY" propagate \
            $(gen_common) --snapshot "$SNAP" --api "$API" --control-log "$RUN_DIR/control.log" \
            --results "$RESULTS" --first $((STEP + 1)) --changes "$CHANGES" \
            --timeout "$ACK_TIMEOUT" --label "$who" --port "$LISTEN_PORT" --node "$node" \
            --proxy-log "$([[ $who == ferry ]] && echo "$RUN_DIR/ferry.log")" ||
            die "$who: propagation test failed"
        STEP=$((STEP + CHANGES))
    fi
    mapfile -t tp < <(tree "$pid")
    rss_after=$(status_kib VmRSS "${tp[@]}")
    hwm=$(status_kib VmHWM "${tp[@]}")
    save "mem_$who" "{\"rss_kib\": $rss, \"rss_after_kib\": $rss_after, \"hwm_kib\": $hwm,
        \"initial_ack_s\": $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'),
        \"cpu_initial_s\": $cpu_init}"
    stop "$pid"
}

fanout_phase() {
    local want=$PROXIES fit avail per i pids=() batch=10 t0 t1 n
    # Memory: one proxy's peak (VmHWM) in the ferry phase (or 64 MiB), x1.2,
    # within MEM_PCT (65) % of MemAvailable (the machine is shared: leave room).
    per=$(python3 -c 'import json,sys
try: print(json.load(open(sys.argv[1]))["mem_ferry"]["hwm_kib"])
except Exception: print(65536)' "$RESULTS")
    avail=$(awk '$1 == "MemAvailable:" { print $2 }' /proc/meminfo)
    fit=$((avail * MEM_PCT / 100 / (per * 12 / 10)))
    n=$want
    ((fit < n)) && n=$fit
    ((n >= 1)) || die "no memory for even one fan-out proxy"
    ((n < want)) && log "fan-out: memory fits $n of $want proxies (${per} KiB peak each, x1.2," \
        "within $MEM_PCT % of ${avail} KiB available; FERRY_XDS_BENCH_MEM_PCT raises it)"
    log "fan-out: $n proxies"
    log "fan-out: starting $n ferry-proxy processes (node ids fan-0..fan-$((n - 1))), $batch at a time"
    t0=$(now)
    for ((i = 0; i < n; i++)); do
        spawn "fan-$i" "$PROXY_CPU" "$FERRY_BIN" --xds "http://127.0.0.1:$XDS_PORT" \
            --node-id "fan-$i" --node-cluster bench --admin "127.0.0.1:$((FAN_ADMIN_BASE + i))" \
            --concurrency 1 --log-level warn
        pids+=("$LAST_PID")
        if (((i + 1) % batch == 0 || i + 1 == n)); then
            waited timeout -k 5 "$((ACK_TIMEOUT + 10))" python3 "$PY" wait-acked --api "$API" \
                --node-prefix fan- --count $((i + 1)) --timeout "$ACK_TIMEOUT" --interval 0.2 \
                --pids "$(IFS=,; echo "${pids[*]}")" \
                >/dev/null || die "fan-out: proxies 0..$i did not all ACK"
            log "fan-out: $((i + 1)) proxies ACKed ($(awk -v a="$t0" -v b="$(now)" \
                'BEGIN { printf "%.0f", b - a }') s); ferry-control RSS" \
                "$(($(status_kib VmRSS "$CONTROL_PID") / 1024)) MiB"
        fi
    done
    t1=$(now)
    local rss_list
    rss_list=$(for p in "${pids[@]}"; do status_kib VmRSS "$p"; done | sort -n | paste -sd, -)
    save fanout_start "{\"nodes\": $n, \"elapsed_s\": $(awk -v a="$t0" -v b="$t1" \
        'BEGIN { printf "%.1f", b - a }'), \"proxy_rss_kib_median\":
        $(python3 -c 'import statistics,sys; print(statistics.median(int(x) for x in sys.argv[1].split(",")))' "$rss_list"),
        \"control_rss_kib\": $(status_kib VmRSS "$CONTROL_PID")}"
    sleep 2
    # shellcheck disable=SC2046
    waited timeout -k 5 $((FANOUT_CHANGES * (ACK_TIMEOUT + 60) + 30)) python3 "$PY" fanout $(gen_common) \
        --snapshot "$SNAP" --api "$API" --control-log "$RUN_DIR/control.log" \
        --results "$RESULTS" --first $((STEP + 1)) --changes "$FANOUT_CHANGES" \
        --timeout "$ACK_TIMEOUT" --node-prefix fan- --count "$n" --control-pid "$CONTROL_PID" ||
        die "fan-out push test failed"
    STEP=$((STEP + FANOUT_CHANGES))
    stop "${pids[@]}"
}

main() {
    parse_args "$@"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    command -v nginx >/dev/null || die "nginx missing (bench/run.sh --setup-only installs it)"
    command -v curl >/dev/null || die "curl missing"
    pick_binaries
    has_phase envoy && pick_envoy
    if (($(nproc) < 2)); then log "fewer than 2 CPUs: not pinning"; PIN=0; fi
    local want=65536 hard
    hard=$(ulimit -Hn)
    [[ $hard == unlimited ]] || ((hard >= want)) || want=$hard
    ulimit -n "$want" || true

    RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ferry-xds-bench.XXXXXX")
    chmod 755 "$RUN_DIR"
    SNAP="$RUN_DIR/snapshot.yaml"
    RESULTS="$RUN_DIR/results.json"
    local port
    for port in "$XDS_PORT" "$API_PORT" "$LISTEN_PORT" "$FERRY_ADMIN_PORT" "$ENVOY_ADMIN_PORT" \
        "$PROBE_A_BASE" "$PROBE_B_BASE" "$FAN_ADMIN_BASE"; do
        port_busy "$port" && die "127.0.0.1:$port is in use (set FERRY_XDS_BENCH_PORT_BASE)"
    done
    PER_CLUSTER=$((ENDPOINTS / CLUSTERS))
    write_backend
    write_envoy
    spawn backend "$SIDE_CPU" nginx -p "$RUN_DIR/" -e "$RUN_DIR/backend.error.log" -c "$RUN_DIR/backend.conf"
    wait_http backend "$LAST_PID" "http://127.0.0.1:$PROBE_A_BASE/" 15
    start_control

    local rev
    rev=$(git -C "$ROOT_DIR" rev-parse --short HEAD 2>/dev/null || echo none)
    [[ -z $(git -C "$ROOT_DIR" status --porcelain 2>/dev/null | head -n1) ]] || rev+="+dirty"
    save meta "$(python3 -c 'import json,sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
        snapshot "$(cat "$RUN_DIR/gen0.json")" binaries "$BIN_NOTE" commit "$rev" \
        envoy "$([[ -x ${ENVOY_BIN:-} ]] && "$ENVOY_BIN" --version 2>/dev/null | grep -oE '[0-9a-f]{40}/[0-9.]+' | cut -d/ -f2)" \
        pinning "$( ((PIN)) && echo "proxy under test on CPU $PROXY_CPU; ferry-control, backend, probe on CPU $SIDE_CPU" || echo none)" \
        load_before "$(cut -d' ' -f1-3 /proc/loadavg)" proxies_requested "$PROXIES")"

    has_phase ferry && proxy_phase ferry
    has_phase envoy && proxy_phase envoy
    has_phase fanout && fanout_phase

    save control "{\"rss_kib\": $(status_kib VmRSS "$CONTROL_PID"), \"hwm_kib\": $(status_kib VmHWM "$CONTROL_PID"), \"cpu_s\": $(cpu_s "$CONTROL_PID")}"
    python3 - "$RESULTS" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); d["meta"]["load_after"] = sys.argv[2]
json.dump(d, open(sys.argv[1], "w"), indent=1)
EOF
    local args=()
    [[ -n $JSON_OUT ]] && args+=(--json "$JSON_OUT")
    python3 "$PY" report "$RUN_DIR" "${args[@]}"
}

main "$@"
