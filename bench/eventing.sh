#!/usr/bin/env bash
# bench/eventing.sh - the eventing broker's two numbers, on this machine:
#
#   ingress   events/s answered 202 with durability (each 202 follows the
#             fsync of the group-commit batch that carried the event), from
#             256 concurrent keep-alive connections; binary mode (one event
#             per request) and batched mode (50 per request).
#   latency   1,000 events/s paced for 10 s into a broker with 10 triggers;
#             per delivery, start of the producer's POST -> subscriber got it
#             (p50/p90/p99/max), all on 127.0.0.1.
#
# The load generator and the subscriber are Rust (tests/integration/tests/
# eventing_bench.rs, ignored tests) and share the machine's cores with
# ferry-control (release build), as producers and subscribers would on a
# one-box setup. The broker and its triggers are created as users create
# them: `ferry-control apply` against the running `serve`.
#
# Usage: bench/eventing.sh [--secs S] [--conns C] [--no-build]
# Env:   FERRY_BENCH_SECS, FERRY_BENCH_CONNS override the same settings.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=1
while (($#)); do
    case "$1" in
        --secs) export FERRY_BENCH_SECS="$2"; shift 2 ;;
        --conns) export FERRY_BENCH_CONNS="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

if ((build)); then
    cargo build --release -p ferry-control-plane --bin ferry-control
fi
echo "disk under ${TMPDIR:-/tmp}: $(df -h "${TMPDIR:-/tmp}" | awk 'NR==2 {print $1, $2}')"
export FERRY_CONTROL_BIN="$PWD/target/release/ferry-control"
# The load generator and subscriber run in the test profile (dependencies
# optimised, see the workspace Cargo.toml); ferry-control is the release
# build.
for t in bench_ingress_throughput bench_latency_10_triggers; do
    cargo test -p ferry-integration-tests --test eventing_bench -- \
        --ignored --nocapture --exact "$t" 2>&1 | grep -E 'BENCH|panicked|error' || true
done
