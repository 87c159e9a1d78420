#!/usr/bin/env python3
"""Turn the raw records of one bench/run.sh run into a table and JSON.

usage: report.py RUN_DIR OUT.json [MORE_OUT.json ...]

RUN_DIR holds what run.sh wrote:
  meta.env    key=value lines (settings, versions)
  runs.tsv    workload proxy round cpu_seconds wrk_output_file
  idle.tsv    proxy conns rss_before_kb rss_after_kb opened failed still_open
  notes.txt   free-text notes (skipped proxies, failed steps), one per line
"""

import json
import math
import os
import re
import statistics
import sys

PROXIES = ["haproxy", "drawbridge", "bare"]
LABEL = {"haproxy": "HAProxy", "drawbridge": "drawbridge", "bare": "bare Pingora"}
WORKLOADS = ["new", "sticky", "maint"]
RATIOS = [("drawbridge", "haproxy"), ("drawbridge", "bare"), ("bare", "haproxy")]

# CPU share used by other work during a measurement that makes it suspect. Kernel work
# for the loopback traffic that is charged to no process reads as up to ~20% at the
# highest request rates (maint), so the bar sits above that.
OTHER_LIMIT_PCT = 25
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_duration_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        return None
    return float(m.group(1)) * UNIT_MS[m.group(2)]


def parse_wrk(path):
    """Figures from wrk --latency output; None where absent."""
    out = {"requests": None, "req_s": None, "p50_ms": None, "p99_ms": None,
           "non_2xx_3xx": 0, "socket_errors": 0}
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        return out
    m = re.search(r"^\s*(\d+) requests in ", text, re.M)
    if m:
        out["requests"] = int(m.group(1))
    m = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    if m:
        out["req_s"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(r"^\s*" + pct + r"(?:\.0+)?%\s+(\S+)", text, re.M)
        if m:
            out[key] = parse_duration_ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if m:
        out["non_2xx_3xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(g) for g in m.groups())
    return out


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def median_ci(values, level=0.95):
    """Confidence interval of the median that assumes nothing of the distribution.

    The median lies below the k-th smallest of n values with probability
    P(Binomial(n, 1/2) < k); the interval is the k-th smallest to the k-th
    largest value for the largest k that leaves at most (1 - level) / 2 out on
    each side. Returns (low, high, coverage), or None with fewer than 6 values
    (even min-max covers less than 95 % then).
    """
    xs = sorted(values)
    n = len(xs)
    tail, k = 0.0, 0
    for j in range(n):
        p = math.comb(n, j) / 2**n
        if tail + p > (1 - level) / 2:
            break
        tail += p
        k = j + 1
    if k == 0:
        return None
    return xs[k - 1], xs[n - k], 1 - 2 * tail


def pair_label(a, b):
    """Short name of the ratio of proxy a to proxy b: db/HAProxy, db/bare, bare/HAProxy."""
    return f"{LABEL[a]}/{LABEL[b]}".replace("drawbridge/", "db/") \
        .replace("/bare Pingora", "/bare").replace("bare Pingora/", "bare/")


def round_ratios(rounds_a, rounds_b, figure):
    """Ratios a/b of one figure, round by round, over the rounds both proxies ran."""
    ra = {r["round"]: r.get(figure) for r in rounds_a}
    rb = {r["round"]: r.get(figure) for r in rounds_b}
    each = [ratio(ra[k], rb[k]) for k in sorted(ra) if k in rb]
    return [x for x in each if x is not None]


def ci95(values):
    """median_ci as the JSON records it."""
    ci = median_ci(values)
    return None if ci is None else {"low": ci[0], "high": ci[1], "coverage": ci[2]}


def write_json(path, doc):
    """Write `doc` to `path` whole or not at all (through a temporary file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_num(v, kind):
    if v is None:
        return "-"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "ms":
        return f"{v:.2f}"
    if kind == "kb":
        return f"{v:.1f}"
    if kind == "ratio":
        return f"{v:.2f}x"
    return str(v)


def load_tsv(path):
    rows = []
    if not os.path.exists(path):
        return rows
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if line and not line.startswith("#"):
            rows.append(line.split("\t"))
    return rows


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    run_dir = sys.argv[1]
    outs = sys.argv[2:]

    meta = {}
    if os.path.exists(os.path.join(run_dir, "meta.env")):
        for line in open(os.path.join(run_dir, "meta.env"), encoding="utf-8"):
            key, sep, value = line.rstrip("\n").partition("=")
            if sep:
                meta[key] = int(value) if re.fullmatch(r"-?[0-9]+", value) else value
    notes = []
    if os.path.exists(os.path.join(run_dir, "notes.txt")):
        notes = [l.rstrip("\n") for l in open(os.path.join(run_dir, "notes.txt"),
                                                encoding="utf-8") if l.strip()]
    measured = [p for p in str(meta.get("proxies", ",".join(PROXIES))).split(",") if p]

    # ---- throughput workloads -------------------------------------------------
    per_run = {}
    for row in load_tsv(os.path.join(run_dir, "runs.tsv")):
        workload, proxy, rnd, cpu_s, wrk_file = row[:5]
        fig = parse_wrk(os.path.join(run_dir, wrk_file))
        fig["machine_busy_before_pct"] = int(row[5]) if len(row) > 5 and row[5].isdigit() else None
        fig["machine_other_pct"] = int(row[6]) if len(row) > 6 and row[6].isdigit() else None
        cpu = float(cpu_s) if cpu_s not in ("", "nan") else None
        fig["round"] = int(rnd)
        fig["cpu_s"] = cpu
        fig["req_per_cpu_s"] = (fig["requests"] / cpu) if (fig["requests"] and cpu) else None
        per_run.setdefault(workload, {}).setdefault(proxy, []).append(fig)

    results = {}
    for workload in WORKLOADS:
        for proxy, runs in per_run.get(workload, {}).items():
            results.setdefault(workload, {})[proxy] = {
                "req_s": median(r["req_s"] for r in runs),
                "p50_ms": median(r["p50_ms"] for r in runs),
                "p99_ms": median(r["p99_ms"] for r in runs),
                "req_per_cpu_s": median(r["req_per_cpu_s"] for r in runs),
                "cpu_s": median(r["cpu_s"] for r in runs),
                "non_2xx_3xx": sum(r["non_2xx_3xx"] for r in runs),
                "socket_errors": sum(r["socket_errors"] for r in runs),
                "requests": sum(r["requests"] or 0 for r in runs),
                "rounds": runs,
            }

    # ---- idle connections -----------------------------------------------------
    for row in load_tsv(os.path.join(run_dir, "idle.tsv")):
        proxy, conns, before, after, opened, failed, still_open = row[:7]
        before, after, opened = int(before), int(after), int(opened)
        results.setdefault("idle", {})[proxy] = {
            "conns": int(conns),
            "opened": opened,
            "failed": int(failed),
            "still_open": int(still_open) if still_open.isdigit() else None,
            "rss_before_kb": before,
            "rss_after_kb": after,
            "rss_growth_mb": (after - before) / 1024.0,
            "kb_per_conn": ((after - before) / opened) if opened else None,
        }

    figures = [
        ("req_s", "req/s", "int"),
        ("p50_ms", "p50 ms", "ms"),
        ("p99_ms", "p99 ms", "ms"),
        ("req_per_cpu_s", "req/CPU-s", "int"),
    ]
    idle_figures = [("kb_per_conn", "KB/idle conn", "kb"), ("rss_growth_mb", "RSS growth MB", "kb")]

    ratios = {}
    for workload, figs in [(w, figures) for w in WORKLOADS] + [("idle", idle_figures)]:
        for a, b in RATIOS:
            key = f"{a}/{b}"
            for fkey, _, _ in figs:
                va = results.get(workload, {}).get(a, {}).get(fkey)
                vb = results.get(workload, {}).get(b, {}).get(fkey)
                ratios.setdefault(workload, {}).setdefault(key, {})[fkey] = ratio(va, vb)

    # Per-round ratios of requests per CPU-second: the two proxies of a round
    # ran back to back, so slow drift of the machine cancels out of each ratio.
    paired = {}
    for workload in WORKLOADS:
        for a, b in RATIOS:
            each = round_ratios(per_run.get(workload, {}).get(a, []),
                                per_run.get(workload, {}).get(b, []), "req_per_cpu_s")
            if each:
                paired.setdefault(workload, {})[f"{a}/{b}"] = {
                    "median": statistics.median(each), "min": min(each), "max": max(each),
                    "ci95": ci95(each),
                    "rounds": each,
                }

    # ---- table ----------------------------------------------------------------
    cols = ["workload", "figure"] + [LABEL[p] for p in PROXIES] + \
           [pair_label(a, b) for a, b in RATIOS]
    lines = []
    for workload, figs in [(w, figures) for w in WORKLOADS] + [("idle", idle_figures)]:
        if workload not in results:
            continue
        for fkey, flabel, kind in figs:
            row = [workload, flabel]
            for p in PROXIES:
                row.append(fmt_num(results[workload].get(p, {}).get(fkey), kind))
            for a, b in RATIOS:
                row.append(fmt_num(ratios[workload][f"{a}/{b}"][fkey], "ratio"))
            lines.append(row)
    widths = [max(len(c), *(len(r[i]) for r in lines)) if lines else len(c)
              for i, c in enumerate(cols)]
    sep = "  "

    def render(row):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [row[i].rjust(widths[i]) for i in range(2, len(row))]
        return sep.join(cells)

    print()
    print(f"drawbridge benchmark  {meta.get('date', '')}  rounds={meta.get('rounds', '?')} "
          f"duration={meta.get('duration', '?')} wrk -t1 -c{meta.get('connections', '?')}  "
          f"idle={meta.get('idle_conns', '?')} conns  profile={meta.get('profile', '?')}  "
          "(medians; ratios a/b of the figure)")
    if meta.get("together") == 1:
        print("the proxies of a round were measured at the same time (--together), sharing "
              "the machine: only the req/CPU-s ratios compare them")
    print(render(cols))
    print(render(["-" * w for w in widths]))
    prev = None
    for row in lines:
        if prev is not None and row[0] != prev:
            print()
        prev = row[0]
        print(render(row))

    if paired:
        print()
        print("req/CPU-s ratio per round: median (95% confidence interval of the median, "
              "from 6 rounds on; lowest-highest round)")
        for workload in WORKLOADS:
            cells = []
            for a, b in RATIOS:
                pr = paired.get(workload, {}).get(f"{a}/{b}")
                if pr:
                    ci = pr["ci95"]
                    ci_text = f"CI {ci['low']:.2f}-{ci['high']:.2f}; " if ci else ""
                    cells.append(f"{pair_label(a, b)} {pr['median']:.2f}x ({ci_text}"
                                 f"{pr['min']:.2f}-{pr['max']:.2f})")
            if cells:
                print(f"  {workload:<7} " + "   ".join(cells))

    warnings = []
    for workload in WORKLOADS:
        for proxy, r in results.get(workload, {}).items():
            if r["socket_errors"]:
                warnings.append(f"{workload}/{proxy}: {r['socket_errors']} wrk socket errors")
            expected_non2xx = workload == "maint"
            if not expected_non2xx and r["non_2xx_3xx"]:
                warnings.append(f"{workload}/{proxy}: {r['non_2xx_3xx']} non-2xx responses")
            if expected_non2xx and r["requests"] and r["non_2xx_3xx"] < r["requests"]:
                warnings.append(f"{workload}/{proxy}: only {r['non_2xx_3xx']} of "
                                f"{r['requests']} answers were 503s")
    busy_limit = meta.get("quiet_pct", 15) if isinstance(meta.get("quiet_pct"), int) else 15
    all_runs = [r for w in per_run.values() for runs in w.values() for r in runs]
    disturbed = [r for r in all_runs
                 if (r.get("machine_busy_before_pct") or 0) > busy_limit
                 or (r.get("machine_other_pct") or 0) > OTHER_LIMIT_PCT]
    if disturbed:
        warnings.append(f"{len(disturbed)} of {len(all_runs)} measurements ran while other work "
                        f"used the machine (>{busy_limit}% before or >{OTHER_LIMIT_PCT}% during): "
                        f"figures are noisy; rerun on a quiet machine or with QUIET_WAIT=60")
    for proxy, r in results.get("idle", {}).items():
        if r["failed"]:
            warnings.append(f"idle/{proxy}: {r['failed']} connections failed")
        if r["still_open"] is not None and r["still_open"] < r["opened"]:
            warnings.append(f"idle/{proxy}: proxy closed {r['opened'] - r['still_open']} "
                            f"idle connections while held")
    for p in PROXIES:
        if p not in measured and not any(n.startswith(f"{p}: left out") for n in notes):
            warnings.append(f"{p}: not measured")
    others = [r["machine_other_pct"] for r in all_runs if r.get("machine_other_pct") is not None]
    if others:
        print()
        print(f"other work on the machine during the measurements: median {statistics.median(others):.0f}%, "
              f"max {max(others)}% of all CPUs (near 0 on a quiet machine)")
    if warnings or notes:
        print()
        for w in notes + warnings:
            print(f"note: {w}")

    doc = {
        "meta": meta,
        "proxies": measured,
        "figures": {
            "req_s": "requests per second seen by wrk (median of rounds)",
            "p50_ms": "wrk latency median, milliseconds",
            "p99_ms": "wrk latency 99th percentile, milliseconds",
            "req_per_cpu_s": "requests served per CPU-second of the proxy process (utime+stime)",
            "kb_per_conn": "proxy VmRSS growth per idle keep-alive client connection, KB",
        },
        "results": results,
        "ratios": ratios,
        "paired_ratios": paired,
        "notes": notes + warnings,
    }
    for out in outs:
        write_json(out, doc)


if __name__ == "__main__":
    main()
