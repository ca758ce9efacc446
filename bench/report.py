#!/usr/bin/env python3
"""Turn one bench/run.sh run directory into the results table (and JSON).

Usage: report.py RUN_DIR [--duration S] [--warmup S] [--connections C]
                 [--idle-conns N] [--versions TEXT] [--pinning TEXT]
                 [--markdown] [--json PATH]
       report.py parse-wrk WRK_OUTPUT      (prints the parsed fields; for debugging)

RUN_DIR holds what run.sh wrote:
  rows.tsv    one line per target: target, wrk output file, proxy CPU-seconds,
              proxy VmHWM KiB, backend / wrk / other CPU-seconds, steal seconds
              ("-" where it does not apply, e.g. the proxy columns of direct)
  TARGET.mem  key=value lines of the memory phase: idle_rss_kib,
              conns_rss_kib, opened, ok, failed, still_open

Standard library only.
"""

import argparse
import datetime
import json
import os
import platform
import re
import signal
import sys

MIB = 1024.0
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
# A row is flagged when the CPU time spent outside proxy, backend and wrk, or
# the hypervisor's steal time, exceeds this fraction of one core over the run.
# Quiet 2-core machine: 0.01-0.07 core (interrupt work charged to nobody).
DISTURBED_CORE_FRACTION = 0.15

# The targets.
TARGET_RPS_VS_ENVOY = 1.3      # ferry rps >= 1.3 x envoy rps
TARGET_IDLE_RSS_MIB = 10.0     # ferry idle RSS <= 10 MiB
TARGET_CONNS_RSS_MIB = 40.0    # ferry RSS with 1,000 idle connections <= 40 MiB
# Issue 3: header_mutation + local_ratelimit + rbac cost at most 10 % req/s.
TARGET_FILTER_DROP = 0.10      # 1 - ferry-filters rps / ferry rps <= 0.10
TARGET_QUEUE_P50 = 0.05        # ferry-queue p50 / ferry p50 - 1 <= 0.05


def die(msg):
    sys.exit(f"report.py: {msg}")


def parse_wrk(text):
    """Return dict(rps, p50_ms, p99_ms, requests, errors) from `wrk --latency` output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if not rps:
        die("no 'Requests/sec' line in wrk output")
    pct = {p: float(v) * UNIT_MS[u] for p, v, u in
           re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)}
    if "50" not in pct or "99" not in pct:
        die("no 50%/99% latency lines in wrk output (run wrk with --latency)")
    requests = re.search(r"^\s*(\d+) requests in", text, re.M)
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(x) for x in m.groups())
    return {"rps": float(rps.group(1)), "p50_ms": pct["50"], "p99_ms": pct["99"],
            "requests": int(requests.group(1)) if requests else 0, "errors": errors}


def num(text):
    return None if text in ("", "-") else float(text)


def read_mem(path):
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key:
                    out[key] = int(value)
    return out


def load_run(run_dir):
    rows = []
    with open(os.path.join(run_dir, "rows.tsv")) as f:
        for line in f:
            (target, wrk_out, cpu, hwm, backend_cpu, loadgen_cpu,
             other_cpu, steal) = line.rstrip("\n").split("\t")
            with open(wrk_out) as w:
                row = {"target": target, **parse_wrk(w.read())}
            row["proxy_cpu_s"] = num(cpu)
            row["cpu_s_per_100k"] = (row["proxy_cpu_s"] / row["requests"] * 1e5
                                     if row["proxy_cpu_s"] is not None and row["requests"]
                                     else None)
            row["rps_per_cpu_s"] = (row["requests"] / row["proxy_cpu_s"]
                                    if row["proxy_cpu_s"] else None)
            kib = num(hwm)
            row["peak_rss_mib"] = kib / MIB if kib else None
            mem = read_mem(os.path.join(run_dir, f"{target}.mem"))
            row["idle_rss_mib"] = mem["idle_rss_kib"] / MIB if "idle_rss_kib" in mem else None
            row["conns_rss_mib"] = mem["conns_rss_kib"] / MIB if "conns_rss_kib" in mem else None
            row["idle_conns"] = {k: mem[k] for k in ("opened", "ok", "failed", "still_open")
                                 if k in mem} or None
            row["backend_cpu_s"] = num(backend_cpu)
            row["loadgen_cpu_s"] = num(loadgen_cpu)
            row["other_cpu_s"] = num(other_cpu)
            row["steal_s"] = num(steal)
            rows.append(row)
    return rows


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(value, spec):
    if value is None:
        return "-"
    return spec.format(value)


def table(headers, cells, markdown, right_from=1):
    """Render a list of rows of strings as aligned text or Markdown."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---" if i < right_from else "---:"
                                for i in range(len(headers))) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(headers)]

    def line(vals):
        return "  ".join(v.ljust(w) if i < right_from else v.rjust(w)
                         for i, (v, w) in enumerate(zip(vals, widths))).rstrip()
    return "\n".join([line(headers)] + [line(c) for c in cells])


RESULT_COLUMNS = [
    ("target", "target", "{}"),
    ("rps", "req/s", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.3f}"),
    ("p99_ms", "p99 ms", "{:.3f}"),
    ("proxy_cpu_s", "cpu s", "{:.2f}"),
    ("cpu_s_per_100k", "cpu s/100k req", "{:.3f}"),
    ("peak_rss_mib", "peak RSS MiB", "{:.1f}"),
    ("idle_rss_mib", "idle RSS MiB", "{:.1f}"),
    ("conns_rss_mib", "RSS @N idle MiB", "{:.1f}"),
    ("errors", "errors", "{}"),
    ("other_cpu_s", "other cpu s", "{:.2f}"),
]

RATIO_METRICS = [
    ("rps", "req/s"),
    ("p50_ms", "p50"),
    ("p99_ms", "p99"),
    ("cpu_s_per_100k", "cpu s/100k req"),
    ("peak_rss_mib", "peak RSS"),
    ("idle_rss_mib", "idle RSS"),
    ("conns_rss_mib", "RSS @N idle"),
]


def check(name, target_text, measured, measured_text, passed, margin_text, envoy_text):
    return {"check": name, "target": target_text, "measured": measured,
            "measured_text": measured_text, "envoy": envoy_text,
            "result": None if passed is None else ("PASS" if passed else "MISS"),
            "margin": margin_text}


def targets(by, idle_n):
    """The issue's four targets, each with PASS/MISS and its margin."""
    ferry, envoy = by.get("ferry"), by.get("envoy")
    out = []
    get = (lambda row, k: row.get(k) if row else None)

    r = ratio(get(ferry, "rps"), get(envoy, "rps"))
    out.append(check(
        "req/s ferry / envoy", f">= {TARGET_RPS_VS_ENVOY:.2f}x", r,
        fmt(r, "{:.3f}x"), None if r is None else r >= TARGET_RPS_VS_ENVOY,
        "-" if r is None else
        (f"{r - TARGET_RPS_VS_ENVOY:.3f}x above" if r >= TARGET_RPS_VS_ENVOY else
         f"{TARGET_RPS_VS_ENVOY - r:.3f}x short: needs "
         f"+{(TARGET_RPS_VS_ENVOY / r - 1) * 100:.1f}% req/s"),
        fmt(get(envoy, "rps"), "{:.0f} req/s")))

    fp, ep = get(ferry, "p99_ms"), get(envoy, "p99_ms")
    out.append(check(
        "p99 ferry <= envoy", fmt(ep, "<= {:.3f} ms"), fp, fmt(fp, "{:.3f} ms"),
        None if fp is None or ep is None else fp <= ep,
        "-" if fp is None or ep is None else
        (f"{ep - fp:.3f} ms under ({(1 - fp / ep) * 100:.1f}%)" if fp <= ep else
         f"{fp - ep:.3f} ms over (+{(fp / ep - 1) * 100:.1f}%)"),
        fmt(ep, "{:.3f} ms")))

    for key, name, limit in (("idle_rss_mib", "idle RSS ferry", TARGET_IDLE_RSS_MIB),
                             ("conns_rss_mib", f"RSS with {idle_n} idle conns, ferry",
                              TARGET_CONNS_RSS_MIB)):
        v = get(ferry, key)
        out.append(check(
            name, f"<= {limit:.0f} MiB", v, fmt(v, "{:.1f} MiB"),
            None if v is None else v <= limit,
            "-" if v is None else
            (f"{limit - v:.1f} MiB under ({(1 - v / limit) * 100:.0f}%)" if v <= limit else
             f"{v - limit:.1f} MiB over ({v / limit:.2f}x the target)"),
            fmt(get(envoy, key), "{:.1f} MiB")))
    return out


def filter_check(by):
    """Issue 3's target: the filter chain drops req/s by at most 10 %."""
    plain, filt = by.get("ferry"), by.get("ferry-filters")
    if not plain or not filt:
        return None
    r = ratio(filt.get("rps"), plain.get("rps"))
    drop = None if r is None else 1 - r
    return check(
        "req/s drop, ferry-filters vs ferry", f"<= {TARGET_FILTER_DROP * 100:.0f}%", drop,
        fmt(drop, "{:.1%}") + fmt(filt.get("rps"), " ({:.0f} req/s)"),
        None if drop is None else drop <= TARGET_FILTER_DROP,
        "-" if drop is None else
        (f"{(TARGET_FILTER_DROP - drop) * 100:.1f} points under" if drop <= TARGET_FILTER_DROP
         else f"{(drop - TARGET_FILTER_DROP) * 100:.1f} points over"),
        "-")


def queue_check(by):
    """Issue 5's target: the queue-proxy role adds at most 5 % to the p50."""
    plain, queue = by.get("ferry"), by.get("ferry-queue")
    if not plain or not queue:
        return None
    r = ratio(queue.get("p50_ms"), plain.get("p50_ms"))
    added = None if r is None else r - 1
    return check(
        "p50 added, ferry-queue vs ferry", f"<= {TARGET_QUEUE_P50 * 100:.0f}%", added,
        fmt(added, "{:+.1%}") + fmt(queue.get("p50_ms"), " ({:.3f} ms") +
        fmt(plain.get("p50_ms"), " vs {:.3f} ms)"),
        None if added is None else added <= TARGET_QUEUE_P50,
        "-" if added is None else
        (f"{(TARGET_QUEUE_P50 - added) * 100:.1f} points under" if added <= TARGET_QUEUE_P50
         else f"{(added - TARGET_QUEUE_P50) * 100:.1f} points over"),
        "-")


def notes(rows, duration):
    out = []
    limit = DISTURBED_CORE_FRACTION * duration
    for row in rows:
        t = row["target"]
        if row["errors"]:
            out.append(f"{t}: {row['errors']} failed requests: the row is not a valid result")
        if max(row["other_cpu_s"] or 0, row["steal_s"] or 0) > limit:
            out.append(f"{t}: {row['other_cpu_s']:.2f} CPU-s went to other processes and "
                       f"{row['steal_s']:.2f} s to steal during the run: machine not quiet, "
                       f"re-run this row")
        cpu = row["proxy_cpu_s"]
        if cpu and cpu > 1.15 * duration:
            out.append(f"{t}: {cpu:.1f} CPU-s in {duration} s, more than one core")
        if cpu and cpu < 0.85 * duration:
            out.append(f"{t}: used only {cpu:.1f} of {duration} CPU-s: not saturated "
                       f"(limited by the client side or starved): compare cpu s/100k req")
        ic = row.get("idle_conns")
        if ic:
            if ic.get("failed") or ic.get("ok", 0) < ic.get("opened", 0):
                out.append(f"{t}: idle-connection client: {ic.get('ok')} of "
                           f"{ic.get('opened')} requests ok, {ic.get('failed')} failed")
            if "still_open" in ic and ic["still_open"] < ic.get("opened", 0):
                out.append(f"{t}: the proxy closed {ic['opened'] - ic['still_open']} of the "
                           f"idle connections before RSS was read")
    return out


def main_report(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--idle-conns", type=int, default=1000)
    ap.add_argument("--versions", default="")
    ap.add_argument("--pinning", default="")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)

    rows = load_run(a.run_dir)
    by = {r["target"]: r for r in rows}
    md = a.markdown
    out = []

    out.append(f"HTTP/1.1 GET / (5-byte body), wrk -t1 -c{a.connections} -d{a.duration}s "
               f"--latency after {a.warmup} s warm-up; each proxy ONE worker thread "
               f"(--concurrency 1)")
    out.append(f"pinning: {a.pinning}; tools: {a.versions}")
    out.append(f"idle RSS: VmRSS ~1 s after start; RSS @N idle: VmRSS with N={a.idle_conns} "
               f"idle keep-alive connections (fresh process); peak RSS: VmHWM after the load")
    if md:
        out = [f"- {line}" for line in out]
    out.append("")

    headers = [h.replace("@N", f"{a.idle_conns}") for _, h, _ in RESULT_COLUMNS]
    cells = [[fmt(r.get(k), f) for k, _, f in RESULT_COLUMNS] for r in rows]
    out.append(table(headers, cells, md))
    out.append("")

    ratio_cols = [(n, d) for n, d in (("ferry", "envoy"), ("ferry", "direct"),
                                      ("ferry-filters", "ferry"),
                                      ("ferry-queue", "ferry"))
                  if n in by and d in by]
    if ratio_cols:
        headers = ["metric"] + [f"{n}/{d}" for n, d in ratio_cols]
        cells = []
        for key, label in RATIO_METRICS:
            vals = [ratio(by[n].get(key), by[d].get(key)) for n, d in ratio_cols]
            if all(v is None for v in vals):
                continue
            cells.append([label.replace("@N", str(a.idle_conns))] +
                         [fmt(v, "{:.3f}") for v in vals])
        out.append(table(headers, cells, md))
        out.append("")

    checks = targets(by, a.idle_conns)
    for extra in (filter_check(by), queue_check(by)):
        if extra:
            checks.append(extra)
    if "ferry" in by:
        headers = ["target (issue)", "wanted", "ferry", "envoy", "result", "margin"]
        cells = [[c["check"], c["target"], c["measured_text"], c["envoy"],
                  c["result"] or "n/a", c["margin"]] for c in checks]
        out.append(table(headers, cells, md, right_from=6))
        out.append("")

    for n in notes(rows, a.duration):
        out.append(f"note: {n}")
    print("\n".join(out).rstrip())

    if a.json:
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                    if l.startswith("model name")), "unknown")
        meta = {
            "date_utc": datetime.datetime.now(datetime.timezone.utc)
                        .strftime("%Y-%m-%dT%H:%M:%SZ"),
            "load": f"wrk -t1 -c{a.connections} -d{a.duration}s --latency",
            "duration_s": a.duration, "warmup_s": a.warmup,
            "connections": a.connections, "idle_conns": a.idle_conns,
            "pinning": a.pinning, "tools": a.versions, "proxy_workers": 1,
            "cpus": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
        }
        ratios = {f"{n}/{d}": {k: ratio(by[n].get(k), by[d].get(k)) for k, _ in RATIO_METRICS}
                  for n, d in ratio_cols}
        with open(a.json, "w") as f:
            json.dump({"meta": meta, "results": rows, "ratios": ratios,
                       "targets": checks if "ferry" in by else [],
                       "notes": notes(rows, a.duration)}, f, indent=2)
            f.write("\n")


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if len(sys.argv) == 3 and sys.argv[1] == "parse-wrk":
        with open(sys.argv[2]) as f:
            print(json.dumps(parse_wrk(f.read())))
        return
    main_report(sys.argv[1:])


if __name__ == "__main__":
    main()
