#!/usr/bin/env python3
"""bench/xds_bench.py - the measuring half of bench/xds.sh (Python stdlib only).

Subcommands (all loopback, every wait bounded):

  wait-acked  poll ferry-control's REST API until the given nodes have ACKed
              the served version of every type (cds, eds, lds, rds)
  probe       GET / with a Host header through a proxy until the body is the
              expected backend's
  propagate   the propagation test: rewrite the snapshot (atomically) with a
              change, poll the proxy every --interval until it serves it, wait
              for its ACK; repeat; then match each change to ferry-control's
              and the proxy's log lines for the intermediate timestamps
  fanout      the push test: one change, wait until every node ACKed it;
              push time from the control plane's log; ferry-control RSS/CPU
  report      print the table from RUN_DIR/results.json (and --json PATH)
"""

import argparse
import datetime as dt
import json
import os
import re
import socket
import statistics
import sys
import threading
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import xds_gen  # noqa: E402

TYPES = ("cds", "eds", "lds", "rds")


# ------------------------------------------------------------------ helpers

def get_json(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def served_versions(api):
    """{type: version} of ferry-control's current snapshot (GET /v1/xds/snapshot)."""
    snap = get_json(f"{api}/v1/xds/snapshot")
    out = {}
    for t in TYPES:
        v = snap.get(t)
        if isinstance(v, dict):
            v = v.get("version")
        out[t] = v
    return out


def nodes_acked(api, ids, want):
    """The subset of `ids` whose every type is acked at the version in `want`."""
    done = set()
    for n in get_json(f"{api}/v1/xds/nodes"):
        if n.get("id") not in ids or not n.get("connected_streams"):
            continue
        types = n.get("types") or {}
        if all(t in types and types[t].get("state") == "acked"
               and types[t].get("version_acked") == want[t] for t in TYPES):
            done.add(n["id"])
    return done


def wait_acked(api, ids, timeout, interval, want=None, pids=()):
    """Wait until every node in `ids` ACKed `want` (default: what is served
    now). Returns (time all were done, {id: first time seen done}). Gives
    up early if one of `pids` exits."""
    ids = set(ids)
    deadline = time.time() + timeout
    seen = {}
    while True:
        for p in pids:
            if not pid_alive(p):
                raise SystemExit(f"xds_bench: process {p} exited while waiting for ACKs")
        try:
            w = want or served_versions(api)
            now = time.time()
            for i in nodes_acked(api, ids, w) - set(seen):
                seen[i] = now
        except OSError:
            pass
        if len(seen) == len(ids):
            return max(seen.values()), seen
        if time.time() > deadline:
            missing = sorted(ids - set(seen))
            raise SystemExit(f"xds_bench: {len(missing)} of {len(ids)} nodes did not ACK "
                             f"within {timeout}s (e.g. {missing[:5]})")
        time.sleep(interval)


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def http_get(port, host, timeout=1.0):
    """One GET / on a fresh connection. Returns (status, body) or raises."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"content-length:\s*(\d+)", head, re.I)
                if m and len(body) >= int(m.group(1)):
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body.decode(errors="replace").strip()


def probe(port, host, expect, timeout, interval):
    """Poll until the body is `expect`. Returns a dict with served_at (time
    the first matching response arrived), requests, errors (non-200 or
    failed), old (200s with the previous body)."""
    deadline = time.time() + timeout
    n = errors = old = 0
    last_err = ""
    while time.time() < deadline:
        n += 1
        try:
            status, body = http_get(port, host)
        except OSError as e:
            errors += 1
            last_err = str(e)
        else:
            now = time.time()
            if status == 200 and body == expect:
                return {"served_at": now, "requests": n, "errors": errors, "old": old}
            if status == 200:
                old += 1
            else:
                errors += 1
                last_err = f"HTTP {status} {body[:80]!r}"
        time.sleep(interval)
    raise SystemExit(f"xds_bench: {host} through :{port} did not answer {expect!r} within "
                     f"{timeout}s ({n} requests, {errors} errors, last: {last_err})")


# Log lines of tracing's default formatter:
#   2026-11-25T01:25:30.123456Z  INFO target: message key=value ...
TS = re.compile(r"^(?:\x1b\[[0-9;]*m)*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_ts(s):
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def log_events(path, needle):
    """[(unix time, line)] for the lines containing `needle`."""
    out = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if needle not in line:
                    continue
                m = TS.match(line)
                if m:
                    out.append((parse_ts(m.group(1)), ANSI.sub("", line.rstrip())))
    except FileNotFoundError:
        pass
    return out


def first_after(events, t, slack=0.0):
    for ts, line in events:
        if ts >= t - slack:
            return ts, line
    return None, None


def field(line, key):
    m = re.search(rf"\b{key}=(\S+)", line or "")
    return m.group(1) if m else None


def summary(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"n": len(xs), "median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def gen_args(a):
    return (a.routes, a.clusters, a.endpoints, a.listen_port,
            xds_gen.ports(a.probe_a_ports), xds_gen.ports(a.probe_b_ports))


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def save_result(path, key, value):
    d = load(path)
    d[key] = value
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(d, f, indent=1)
    os.rename(tmp, path)


def proc_kib(pid, field_name):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


# -------------------------------------------------------------- subcommands

def cmd_wait_acked(a):
    ids = a.nodes.split(",") if a.nodes else [f"{a.node_prefix}{i}" for i in range(a.count)]
    t0 = time.time()
    pids = [int(p) for p in a.pids.split(",") if p]
    done, _ = wait_acked(a.api, ids, a.timeout, a.interval, pids=pids)
    print(json.dumps({"nodes": len(ids), "all_acked_at": done, "waited_s": done - t0}))


def cmd_probe(a):
    r = probe(a.port, a.host, a.expect, a.timeout, a.interval)
    print(json.dumps(r))


def cmd_propagate(a):
    """Changes a.first..a.first+a.changes-1 against one proxy."""
    g = gen_args(a)
    rows = []
    for k in range(a.first, a.first + a.changes):
        text, _ = xds_gen.generate(*g, k)
        expect = xds_gen.expected_backend(k)
        renamed = xds_gen.write_atomic(a.snapshot, text)
        p = probe(a.port, a.host, expect, a.timeout, a.interval)
        acked, _ = wait_acked(a.api, [a.node], a.timeout, 0.01)
        rows.append({"step": k, "kind": xds_gen.change_kind(k), "renamed_at": renamed,
                     "served_at": p["served_at"], "acked_seen_at": acked,
                     "probe_requests": p["requests"], "probe_errors": p["errors"],
                     "probe_old": p["old"]})
        print(f"[xds-bench] {a.label} change {k} ({rows[-1]['kind']}): served "
              f"{(p['served_at'] - renamed) * 1000:.0f} ms after the rename "
              f"({p['errors']} errors)", file=sys.stderr)
        time.sleep(a.settle)
    # Log timestamps (tracing flushes per line; give it a moment).
    time.sleep(0.3)
    reloads = log_events(a.control_log, "snapshot file reloaded")
    publishes = log_events(a.control_log, "publishing snapshot")
    sent = [e for e in log_events(a.control_log, "sent node=") if f"node={a.cluster}/{a.node}" in e[1]
            or f"node={a.node}" in e[1]]
    applied = log_events(a.proxy_log, "xDS config applied") if a.proxy_log else []
    for r in rows:
        t_reload, _ = first_after(reloads, r["renamed_at"], 0.05)
        t_pub, _ = first_after(publishes, t_reload or r["renamed_at"])
        t_sent, _ = first_after(sent, t_pub or r["renamed_at"])
        t_app, _ = first_after(applied, t_pub or r["renamed_at"])
        r.update(reload_at=t_reload, publish_at=t_pub, sent_at=t_sent, applied_at=t_app)

        def d(x, y):
            return None if x is None or y is None else (y - x) * 1000.0
        r["ms"] = {
            "rename_to_reload": d(r["renamed_at"], t_reload),
            "reload_to_served": d(t_reload, r["served_at"]),
            "reload_to_publish": d(t_reload, t_pub),
            "publish_to_sent": d(t_pub, t_sent),
            "publish_to_served": d(t_pub, r["served_at"]),
            "sent_to_applied": d(t_sent, t_app),
            "applied_to_served": d(t_app, r["served_at"]),
        }
    keys = list(rows[0]["ms"]) if rows else []
    res = {"label": a.label, "changes": rows,
           "summary_ms": {k: summary([r["ms"][k] for r in rows]) for k in keys},
           "probe_errors": sum(r["probe_errors"] for r in rows)}
    for kind in ("rds", "eds"):
        res[f"summary_ms_{kind}"] = summary([r["ms"]["reload_to_served"] for r in rows
                                             if r["kind"] == kind])
    save_result(a.results, f"propagate_{a.label}", res)


def cmd_fanout(a):
    """One change per step; wait until all `count` nodes ACKed it."""
    g = gen_args(a)
    ids = [f"{a.node_prefix}{i}" for i in range(a.count)]
    pid = a.control_pid
    stop = threading.Event()
    peak = {"rss": proc_kib(pid, "VmRSS") or 0}

    def sampler():
        while not stop.is_set():
            v = proc_kib(pid, "VmRSS")
            if v:
                peak["rss"] = max(peak["rss"], v)
            time.sleep(0.02)
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    pushes = []
    for k in range(a.first, a.first + a.changes):
        text, _ = xds_gen.generate(*g, k)
        rss0 = proc_kib(pid, "VmRSS")
        cpu0 = proc_cpu_s(pid)
        before = served_versions(a.api)
        renamed = xds_gen.write_atomic(a.snapshot, text)
        # Wait until ferry-control published the change (its debug log line),
        # then for every node's ACK of the served versions.
        deadline = time.time() + 30
        while first_after(log_events(a.control_log, "publishing snapshot"), renamed)[0] is None:
            if time.time() > deadline:
                raise SystemExit("xds_bench: ferry-control did not publish the change within 30 s")
            time.sleep(0.01)
        want = served_versions(a.api)
        changed = [t for t in TYPES if want[t] != before[t]]
        # Follow the ACKs in ferry-control's log, not its REST API: a GET
        # /v1/xds/nodes with every node's subscriptions (1,000 EDS names
        # each) costs ferry-control more CPU than the push itself.
        pub, _ = first_after(log_events(a.control_log, "publishing snapshot"), renamed)
        all_done = wait_acked_log(a.control_log, pub, ids, {t: want[t] for t in changed},
                                  a.timeout, pid)
        cpu1 = proc_cpu_s(pid)
        # One look at the REST API to confirm.
        wait_acked(a.api, ids, 30, 0.5, want)
        time.sleep(0.3)
        reload_t, _ = first_after(log_events(a.control_log, "snapshot file reloaded"), renamed, 0.05)
        p = {"step": k, "kind": xds_gen.change_kind(k), "changed_types": changed,
             "nodes": len(ids),
             "rename_to_reload_ms": None if reload_t is None else (reload_t - renamed) * 1000,
             "reload_to_publish_ms": None if reload_t is None or pub is None
             else (pub - reload_t) * 1000,
             "publish_to_all_acked_seen_ms": None if pub is None else (all_done - pub) * 1000,
             "control_cpu_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
             "control_rss_before_kib": rss0}
        p.update(analyze_push(a.control_log, pub, all_done, [want[t] for t in changed]))
        pushes.append(p)
        print(f"[xds-bench] push {k} ({p['kind']}, {'+'.join(changed)}) to {len(ids)} nodes: "
              f"last sent {fmt_ms(p.get('publish_to_last_sent_ms'))}, last ACK "
              f"{fmt_ms(p.get('publish_to_last_ack_ms'))} after publish, "
              f"{p.get('streams_closed_during_push', '?')} streams closed meanwhile", file=sys.stderr)
        time.sleep(a.settle)
    stop.set()
    th.join(1)
    res = {"nodes": len(ids), "pushes": pushes, "control_peak_rss_kib": peak["rss"],
           "control_rss_kib": proc_kib(pid, "VmRSS"), "control_hwm_kib": proc_kib(pid, "VmHWM")}
    save_result(a.results, "fanout", res)


def wait_acked_log(control_log, pub, ids, want, timeout, pid):
    """Wait until ferry-control logged, after `pub`, an ACK of every type in
    `want` at its version from every node in `ids`. Reads the log
    incrementally. Returns the time the last one was seen."""
    need = {(f"bench/{i}", t) for i in ids for t in want}
    deadline = time.time() + timeout
    pos = 0
    buf = ""
    while True:
        with open(control_log, errors="replace") as f:
            f.seek(pos)
            buf += f.read()
            pos = f.tell()
        lines = buf.split("\n")
        buf = lines.pop()
        for line in lines:
            if "ACK node=" not in line:
                continue
            m = TS.match(line)
            if not m or parse_ts(m.group(1)) < pub:
                continue
            key = (field(line, "node"), field(line, "type"))
            if key in need and field(line, "version") == want[key[1]]:
                need.discard(key)
        if not need:
            return time.time()
        if time.time() > deadline:
            raise SystemExit(f"xds_bench: {len(need)} (node, type) ACKs missing after {timeout}s, "
                             f"e.g. {sorted(need)[:3]}")
        if not pid_alive(pid):
            raise SystemExit("xds_bench: ferry-control exited")
        time.sleep(0.02)


def analyze_push(control_log, pub, until, versions):
    """From ferry-control's log, for a push published at `pub` of the type
    versions `versions`: per node, the first response of a new version
    (`sent`, logged when the stream's state machine produces it) and the
    first ACK of one; the slowest node of each; and the streams closed (and
    reopened) before `until` (every node ACKed), e.g. by HTTP/2 keepalive."""
    if pub is None:
        return {}
    versions = set(versions)
    first_sent, first_ack = {}, {}
    for needle, d in (("sent node=", first_sent), ("ACK node=", first_ack)):
        for ts, line in log_events(control_log, needle):
            if ts >= pub and field(line, "version") in versions:
                d.setdefault(field(line, "node"), ts)
    closed = [field(line, "node") for ts, line in log_events(control_log, "xDS stream closed")
              if pub <= ts <= until]

    def ms(x):
        return None if x is None else (x - pub) * 1000.0
    return {
        "nodes_sent_in_log": len(first_sent),
        "nodes_acked_in_log": len(first_ack),
        "publish_to_last_sent_ms": ms(max(first_sent.values(), default=None)),
        "publish_to_first_ack_ms": ms(min(first_ack.values(), default=None)),
        "publish_to_last_ack_ms": ms(max(first_ack.values(), default=None)),
        "streams_closed_during_push": len(closed),
        "nodes_closed_during_push": sorted(set(closed)),
    }


def fmt_ms(x):
    return "-" if x is None else f"{x:.0f} ms"


# ------------------------------------------------------------------ report

def cmd_report(a):
    R = load(os.path.join(a.run_dir, "results.json"))
    meta = R.get("meta", {})
    rows = []  # (metric, ferry, envoy, target, verdict)
    notes = []

    def mib(k):
        return None if k is None else k / 1024.0

    def f1(x, unit=""):
        return "-" if x is None else f"{x:.1f}{unit}"

    pf = R.get("propagate_ferry", {})
    pe = R.get("propagate_envoy", {})

    def gate(key, label):
        sf = (pf.get("summary_ms") or {}).get(key)
        se = (pe.get("summary_ms") or {}).get(key)
        if not sf:
            return
        v = ("PASS" if sf["max"] <= 100 else "MISS") + \
            f" (median {sf['median'] - 100:+.0f} ms, max {sf['max'] - 100:+.0f} ms vs 100)"
        rows.append((f"{label}, ms, median / max (n={sf['n']})",
                     f"{sf['median']:.0f} / {sf['max']:.0f}",
                     f"{se['median']:.0f} / {se['max']:.0f}" if se else "-", "<= 100", v))
    gate("reload_to_served", "propagation: ferry-control reload -> proxy serving")
    gate("publish_to_served", "  same without ferry-control's debounce: publish -> serving")
    for label, key in (("  reload -> publish (debounce) ms, median", "reload_to_publish"),
                       ("  publish -> response sent ms, median", "publish_to_sent"),
                       ("  sent -> proxy logged 'applied' ms, median", "sent_to_applied"),
                       ("  rename -> reload logged ms (file poll 1 s), median", "rename_to_reload")):
        k, _, which = key.partition("#")
        which = which or "median"
        a1 = ((pf.get("summary_ms") or {}).get(k) or {}).get(which)
        b1 = ((pe.get("summary_ms") or {}).get(k) or {}).get(which)
        if a1 is not None or b1 is not None:
            rows.append((label, f1(a1), f1(b1), "", ""))
    for kind in ("rds", "eds"):
        a1 = pf.get(f"summary_ms_{kind}")
        b1 = pe.get(f"summary_ms_{kind}")
        if a1:
            rows.append((f"  {kind.upper()} changes only: reload -> serving ms, median / max",
                         f"{a1['median']:.0f} / {a1['max']:.0f}",
                         f"{b1['median']:.0f} / {b1['max']:.0f}" if b1 else "-", "", ""))
    if pf:
        rows.append(("  probe errors (non-200 / failed) during changes",
                     str(pf.get("probe_errors", "-")), str(pe.get("probe_errors", "-")) if pe else "-",
                     "0", ""))
    mf = R.get("mem_ferry", {})
    me = R.get("mem_envoy", {})
    if mf.get("initial_ack_s") is not None or me.get("initial_ack_s") is not None:
        rows.append(("initial load: start -> all types ACKed, s", f1(mf.get("initial_ack_s")),
                     f1(me.get("initial_ack_s")), "", ""))
    if mf.get("rss_kib") or me.get("rss_kib"):
        rf, re_ = mib(mf.get("rss_kib")), mib(me.get("rss_kib"))
        verdict = ""
        if rf and re_:
            ratio = rf / re_
            verdict = ("PASS" if ratio <= 1 / 3 else "MISS") + \
                f" (ratio {ratio:.2f}, {rf - re_ / 3:+.1f} MiB vs 1/3)"
        rows.append(("RSS holding the config, MiB (VmRSS after ACK + settle)",
                     f1(rf), f1(re_), "ferry <= envoy/3", verdict))
        ra, rb = mib(mf.get("rss_after_kib")), mib(me.get("rss_after_kib"))
        rows.append(("  RSS after the propagation changes, MiB", f1(ra), f1(rb), "",
                     f"ratio {ra / rb:.2f}" if ra and rb else ""))
        rows.append(("  peak RSS (VmHWM), MiB", f1(mib(mf.get("hwm_kib"))),
                     f1(mib(me.get("hwm_kib"))), "", ""))
        rows.append(("  CPU s to load the initial config (utime+stime)", f1(mf.get("cpu_initial_s")),
                     f1(me.get("cpu_initial_s")), "", ""))
    fo = R.get("fanout")
    if fo:
        n = fo["nodes"]
        want = meta.get("proxies_requested")
        note = "" if want in (None, n) else f" (of {want} requested)"
        for p in fo["pushes"]:
            rows.append((f"push to {n} proxies{note}, {p['kind'].upper()} change: publish -> "
                         "every node's response produced, ms", f1(p.get("publish_to_last_sent_ms")),
                         "", "(report)", ""))
            rows.append((f"  publish -> first / last node ACK, ms ({p.get('nodes_acked_in_log')} nodes)",
                         f"{f1(p.get('publish_to_first_ack_ms'))} / {f1(p.get('publish_to_last_ack_ms'))}",
                         "", "", ""))
            rows.append(("  ferry-control CPU s, rename -> all ACKed (incl. YAML parse)",
                         f1(p.get("control_cpu_s")),
                         "", "", ""))
            if p.get("streams_closed_during_push"):
                rows.append(("  ADS streams closed (and reopened) during the push",
                             str(p["streams_closed_during_push"]), "", "0", "see note"))
                notes.append(f"{p['kind'].upper()} push: ADS streams of "
                             f"{', '.join(p.get('nodes_closed_during_push', [])[:10])} closed by "
                             "ferry-control before they ACKed, then reopened (ferry-control "
                             "logs 'xDS stream closed', the proxies 'ADS stream failed; "
                             "reconnecting'). The timing fits ferry-control's HTTP/2 keepalive "
                             "(PING every 30 s, 10 s timeout): with one core for all proxies, "
                             "a proxy busy applying the config answers too late.")
        rows.append((f"ferry-control RSS with {n} nodes, MiB (now / peak sampled)",
                     f"{mib(fo['control_rss_kib']):.1f} / {mib(fo['control_peak_rss_kib']):.1f}",
                     "", "", ""))
        if R.get("fanout_start"):
            fs = R["fanout_start"]
            rows.append((f"  {n} proxies connected: initial fan-out time, s",
                         f1(fs.get("elapsed_s")), "", "", ""))
            if fs.get("proxy_rss_kib_median"):
                rows.append(("  per-proxy RSS, MiB, median", f1(mib(fs["proxy_rss_kib_median"])),
                             "", "", ""))
    w = [max(len(str(r[i])) for r in rows + [("metric", "Ferry", "Envoy", "target", "result")])
         for i in range(5)]
    hdr = ("metric", "Ferry", "Envoy", "target", "result")
    print()
    print(" | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
    print("-+-".join("-" * x for x in w))
    for r in rows:
        print(" | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))
    print()
    for n_ in notes:
        print("note: " + n_)
    if notes:
        print()
    for k, v in meta.items():
        print(f"{k}: {v}")
    if a.json:
        out = dict(R)
        out["table"] = [dict(zip(hdr, r)) for r in rows]
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"json: {a.json}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def gen_opts(p):
        p.add_argument("--routes", type=int, required=True)
        p.add_argument("--clusters", type=int, required=True)
        p.add_argument("--endpoints", type=int, required=True)
        p.add_argument("--listen-port", type=int, required=True)
        p.add_argument("--probe-a-ports", required=True)
        p.add_argument("--probe-b-ports", required=True)
        p.add_argument("--snapshot", required=True)
        p.add_argument("--api", required=True)
        p.add_argument("--control-log", required=True)
        p.add_argument("--results", required=True)
        p.add_argument("--first", type=int, default=1)
        p.add_argument("--changes", type=int, default=6)
        p.add_argument("--timeout", type=float, default=60)
        p.add_argument("--settle", type=float, default=1.5)

    p = sub.add_parser("wait-acked")
    p.add_argument("--api", required=True)
    p.add_argument("--nodes", default="")
    p.add_argument("--node-prefix", default="")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--interval", type=float, default=0.02)
    p.add_argument("--pids", default="", help="give up if one of these exits")
    p.set_defaults(fn=cmd_wait_acked)

    p = sub.add_parser("probe")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="svc-0.mesh.local")
    p.add_argument("--expect", required=True)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--interval", type=float, default=0.05)
    p.set_defaults(fn=cmd_probe)

    p = sub.add_parser("propagate")
    gen_opts(p)
    p.add_argument("--label", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="svc-0.mesh.local")
    p.add_argument("--node", required=True)
    p.add_argument("--cluster", default="bench")
    p.add_argument("--proxy-log", default="")
    p.add_argument("--interval", type=float, default=0.001)
    p.set_defaults(fn=cmd_propagate)

    p = sub.add_parser("fanout")
    gen_opts(p)
    p.add_argument("--node-prefix", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--control-pid", type=int, required=True)
    p.set_defaults(fn=cmd_fanout)

    p = sub.add_parser("report")
    p.add_argument("run_dir")
    p.add_argument("--json", default="")
    p.set_defaults(fn=cmd_report)

    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
