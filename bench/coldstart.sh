#!/usr/bin/env bash
# bench/coldstart.sh - cold-start overhead of a revision at zero, through the gateway.
#
# Builds ferry-control, ferry-proxy and ferry-hello (release), starts
# `ferry-control up` on one Service (`cold`, the ferry-hello app) whose
# annotations shorten the way to zero (window 6s, scale-to-zero-grace-period
# 1s), then N times (default 20): waits until the real autoscaler has taken
# the revision to zero (desired and ready 0, the instance's processes gone,
# the gateway's cluster empty), sends one GET through the gateway and times
# it. Per cold start:
#   overhead = first-response time - the app's own start time
# where the app's start time is from its spawn (the process scaler writes
# `spawning ... at unix_us=` to the instance's log) to its listening socket
# (ferry-hello logs `listening on ... at unix_us=`). The control plane's log
# (`--log info`) splits the rest: request → activation decision → spawn,
# and listening → instance ready (readiness probes) → response (endpoint
# to EDS to the gateway's release, and the proxied request itself).
# Prints a table and one JSON object; the target (issue 5) is p50 <= 50 ms.
#
# Usage: bench/coldstart.sh [--cycles N] [--no-build] [--keep] [--json PATH]
# Env: FERRY_BENCH_PORT_BASE (default 27000; ports BASE+200..BASE+203).
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CYCLES=20
BUILD=1
KEEP=0
JSON=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cycles) CYCLES="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    --json) JSON="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "bench/coldstart.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! [[ "$CYCLES" =~ ^[1-9][0-9]*$ ]]; then
  echo "bench/coldstart.sh: --cycles needs a positive number" >&2
  exit 2
fi

cd "$ROOT_DIR"
if [[ $BUILD == 1 ]]; then
  cargo build --release -p ferry-control-plane -p ferry-proxy -p ferry-hello >&2
fi
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/release"
for b in ferry-control ferry-proxy ferry-hello; do
  if [[ ! -x "$BIN_DIR/$b" ]]; then
    echo "bench/coldstart.sh: $BIN_DIR/$b missing (run without --no-build)" >&2
    exit 1
  fi
done

BASE="${FERRY_BENCH_PORT_BASE:-27000}"
GATEWAY="127.0.0.1:$((BASE + 200))"
ADMIN="127.0.0.1:$((BASE + 201))"
XDS="127.0.0.1:$((BASE + 202))"
API="127.0.0.1:$((BASE + 203))"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/ferry-coldstart.XXXXXX")"
UP_PID=""
cleanup() {
  if [[ -n "$UP_PID" ]] && kill -0 "$UP_PID" 2>/dev/null; then
    kill -TERM "$UP_PID" 2>/dev/null || true
    for _ in $(seq 1 300); do
      kill -0 "$UP_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$UP_PID" 2>/dev/null || true
  fi
  if [[ $KEEP == 1 ]]; then
    echo "bench/coldstart.sh: kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

mkdir -p "$WORK/manifests"
cat >"$WORK/manifests/cold.yaml" <<'YAML'
# Scales to zero a few seconds after its last request: a 6 s stable window
# and a 1 s grace period, decided by the real autoscaler.
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: cold
spec:
  template:
    metadata:
      name: cold-v1
      annotations:
        autoscaling.knative.dev/window: "6s"
        autoscaling.knative.dev/scale-to-zero-grace-period: "1s"
    spec:
      containers:
        - command: [ferry-hello]
          readinessProbe:
            httpGet: {path: /healthz}
YAML

"$BIN_DIR/ferry-control" up "$WORK/manifests" \
  --data-dir "$WORK/data" \
  --gateway-listen "$GATEWAY" --gateway-admin "$ADMIN" \
  --xds-listen "$XDS" --api-listen "$API" \
  --log info >"$WORK/up.out" 2>"$WORK/up.err" </dev/null &
UP_PID=$!

for _ in $(seq 1 600); do
  if grep -q "Ferry is up" "$WORK/up.out" 2>/dev/null; then break; fi
  if ! kill -0 "$UP_PID" 2>/dev/null; then
    echo "bench/coldstart.sh: ferry-control up exited:" >&2
    tail -20 "$WORK/up.err" >&2
    exit 1
  fi
  sleep 0.1
done
grep -q "Ferry is up" "$WORK/up.out" || { echo "bench/coldstart.sh: up not ready in 60 s" >&2; exit 1; }

CYCLES="$CYCLES" GATEWAY="$GATEWAY" ADMIN="$ADMIN" API="$API" WORK="$WORK" JSON="$JSON" \
  python3 - <<'PY'
import json, os, re, sys, time, glob, http.client, urllib.request
from datetime import datetime, timezone

cycles = int(os.environ["CYCLES"])
gateway, admin, api, work = (os.environ[k] for k in ("GATEWAY", "ADMIN", "API", "WORK"))
host = "cold.default.example.com"
instances = os.path.join(work, "data", "instances")
cp_log = os.path.join(work, "up.err")

def get_json(addr, path):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
            return json.load(r)
    except Exception:
        return None

def wait(what, cond, cap):
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    sys.exit(f"bench/coldstart.sh: {what} not reached within {cap} s")

def at_zero():
    st = (get_json(api, "/v1/namespaces/default/revisions/cold-v1") or {}).get("status", {})
    return st.get("actualReplicas", -1) == 0 and st.get("desiredReplicas", -1) == 0

def processes_gone():
    return not glob.glob(os.path.join(instances, "*.pids"))

def gateway_empty():
    cs = (get_json(admin, "/clusters?format=json") or {}).get("clusters")
    if not isinstance(cs, list):
        return False
    for c in cs:
        if c.get("name") == "default/cold-v1":
            return not c.get("endpoints")
    return False

def unix_us(line, key="unix_us="):
    m = re.search(key + r"(\d+)", line)
    return int(m.group(1)) if m else None

def newest_instance_log():
    logs = [p for p in glob.glob(os.path.join(instances, "cold-v1-*.log")) if not p.endswith(".proxy.log")]
    return max(logs, key=lambda p: int(re.search(r"-(\d+)\.log$", p).group(1)), default=None)

TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z")

def log_time_us(line):
    m = TS.match(line)
    if not m:
        return None
    t = m.group(1)
    whole, _, frac = t.partition(".")
    dt = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000 + int((frac + "000000")[:6])

def cp_events(since_us, instance):
    """(activation decision, instance ready) times from the control plane's log."""
    activating = ready = None
    try:
        lines = open(cp_log, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        return None, None
    for line in lines:
        t = log_time_us(line)
        if t is None or t < since_us - 1000:
            continue
        if activating is None and "activating" in line and "cold-v1" in line:
            activating = t
        if ready is None and "instance ready" in line and f"instance={instance}" in line:
            ready = t
    return activating, ready

rows = []
for i in range(cycles):
    wait("revision at zero", at_zero, 120)
    wait("instance processes stopped", processes_gone, 60)
    wait("gateway cluster empty", gateway_empty, 20)
    before = newest_instance_log()
    conn = http.client.HTTPConnection(gateway, timeout=60)
    sent_us = time.time_ns() // 1000
    t0 = time.perf_counter()
    conn.request("GET", "/", headers={"Host": host})
    resp = conn.getresponse()
    body = resp.read()
    total_ms = (time.perf_counter() - t0) * 1000
    conn.close()
    if resp.status != 200 or body != b"Hello from cold-v1\n":
        sys.exit(f"bench/coldstart.sh: cycle {i + 1}: {resp.status} {body[:200]!r}")
    log = newest_instance_log()
    if log is None or log == before:
        sys.exit(f"bench/coldstart.sh: cycle {i + 1}: no new instance started")
    spawn = listen = None
    for line in open(log, encoding="utf-8", errors="replace"):
        if "ferry-control: spawning" in line and spawn is None:
            spawn = unix_us(line)
        if "listening on" in line and listen is None:
            listen = unix_us(line)
    if spawn is None or listen is None:
        sys.exit(f"bench/coldstart.sh: cycle {i + 1}: no spawn/listen time in {log}")
    app_ms = (listen - spawn) / 1000
    instance = os.path.basename(log)[: -len(".log")]
    # The decision and the ready line are logged a moment after the fact;
    # give the log a little time to reach the file.
    activating = ready = None
    for _ in range(40):
        activating, ready = cp_events(sent_us, instance)
        if activating and ready:
            break
        time.sleep(0.05)
    row = {
        "total_ms": total_ms,
        "app_start_ms": app_ms,
        "overhead_ms": total_ms - app_ms,
    }
    if activating and ready:
        row.update({
            "to_decision_ms": (activating - sent_us) / 1000,
            "decision_to_spawn_ms": (spawn - activating) / 1000,
            "listen_to_ready_ms": (ready - listen) / 1000,
            "ready_to_response_ms": (sent_us + total_ms * 1000 - ready) / 1000,
        })
    rows.append(row)
    print(f"cold start {i + 1:2}/{cycles}: total {total_ms:7.1f} ms  app start {app_ms:6.1f} ms  "
          f"overhead {row['overhead_ms']:6.1f} ms", flush=True)

def pct(vals, q):
    s = sorted(vals)
    return s[min(len(s) - 1, int(round((len(s) - 1) * q)))]

def summary(key):
    vals = [r[key] for r in rows if key in r]
    if not vals:
        return None
    return {"p50": round(pct(vals, 0.5), 1), "p90": round(pct(vals, 0.9), 1), "max": round(max(vals), 1)}

keys = ["total_ms", "app_start_ms", "overhead_ms", "to_decision_ms", "decision_to_spawn_ms",
        "listen_to_ready_ms", "ready_to_response_ms"]
out = {"cycles": cycles}
print()
print(f"{'':24} {'p50':>8} {'p90':>8} {'max':>8}")
for k in keys:
    s = summary(k)
    if s:
        out[k] = s
        print(f"{k:24} {s['p50']:8.1f} {s['p90']:8.1f} {s['max']:8.1f}")
p50 = out["overhead_ms"]["p50"]
out["target_p50_ms"] = 50
out["pass"] = p50 <= 50
print()
print(f"overhead p50 {p50} ms: {'PASS' if out['pass'] else 'MISS'} (target <= 50 ms)")
print(json.dumps(out))
if os.environ.get("JSON"):
    with open(os.environ["JSON"], "w") as f:
        json.dump(out, f, indent=2)
PY
