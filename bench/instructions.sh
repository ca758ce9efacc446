#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a repeatable
# figure (unlike req/s) for before/after comparisons on a busy machine.
#
#   bench/instructions.sh [BINARY] [BINARY2 ...]
#
# For each binary: nginx backend on 127.0.0.1, the proxy under callgrind
# with one worker, h2load (HTTP/1.1, 10 connections) sends N1 then (in a
# fresh process) N2 requests; (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of
# one request with start-up and shutdown cancelled out.
set -euo pipefail
cd "$(dirname "$0")/.."

N1=${N1:-2000}
N2=${N2:-12000}
PORT_BASE=${FERRY_BENCH_PORT_BASE:-27100}
BACKEND=$((PORT_BASE + 1)); PROXY=$((PORT_BASE + 2)); ADMIN=$((PORT_BASE + 3))
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=(target/release/ferry-proxy)
for tool in valgrind h2load nginx; do
    command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$tool" >/dev/null 2>&1 || {
        echo "missing $tool: run bench/run.sh --setup-only, and apt-get install valgrind" >&2; exit 1; }
done
PATH="$PATH:/usr/sbin"

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT INT TERM

cat > "$tmp/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $tmp/nginx.pid; error_log $tmp/nginx.err;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$BACKEND; location / { return 200 "hello"; } } }
NGINX
nginx -c "$tmp/nginx.conf" & pids+=($!)

cat > "$tmp/ferry.yaml" <<YAML
listeners:
  - {name: bench, address: 127.0.0.1:$PROXY, route_config: r}
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
    endpoints: [{address: 127.0.0.1:$BACKEND}]
YAML

wait_ready() {
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$ADMIN/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "proxy did not become ready" >&2; return 1
}

# Total instructions of one proxy run serving $2 requests.
run_once() {
    local bin=$1 n=$2 out="$tmp/cg.$RANDOM"
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --config "$tmp/ferry.yaml" \
        --admin "127.0.0.1:$ADMIN" --concurrency 1 --drain-timeout 1s --log-level error \
        >/dev/null 2>"$tmp/vg.err" &
    local pid=$!
    wait_ready
    timeout 300 h2load --h1 -n "$n" -c 10 -t 1 "http://127.0.0.1:$PROXY/" >"$tmp/h2load.out" 2>&1
    grep -q "succeeded, 0 failed" "$tmp/h2load.out" || grep -E "requests:" "$tmp/h2load.out" >&2
    kill -TERM "$pid"; wait "$pid" || true
    grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}'
}

printf '%-50s %14s %14s %12s\n' binary "Ir@$N1" "Ir@$N2" "Ir/request"
for bin in "${bins[@]}"; do
    a=$(run_once "$bin" "$N1")
    b=$(run_once "$bin" "$N2")
    printf '%-50s %14s %14s %12.0f\n' "$bin" "$a" "$b" "$(echo "($b - $a) / ($N2 - $N1)" | bc -l)"
done
