#!/usr/bin/env bash
# bench/autoscaler.sh - time one autoscaler decision tick over many revisions.
#
# Builds ferry-control (release) and runs its hidden `autoscale bench`
# subcommand: N revisions (default 1000) on the default KPA settings, each
# with full 60 s windows fed by 3 instances per second, some bursting into
# panic; then T ticks (default 500), each timed alone (the per-second
# recording between ticks is not timed). Prints one JSON object:
# {"revisions","ticks","mean_us","p50_us","p99_us","max_us"}.
# The budget (issue 5) is 5 ms for 1,000 revisions.
#
# Usage: bench/autoscaler.sh [--revisions N] [--ticks T] [--no-build]
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REVISIONS=1000
TICKS=500
BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --revisions) REVISIONS="$2"; shift 2 ;;
    --ticks) TICKS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "bench/autoscaler.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

cd "$ROOT_DIR"
if [[ $BUILD == 1 ]]; then
  cargo build --release -p ferry-control-plane --bin ferry-control >&2
fi
BIN="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/release/ferry-control"
"$BIN" autoscale bench --revisions "$REVISIONS" --ticks "$TICKS"
