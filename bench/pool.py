#!/usr/bin/env python3
"""Pool the per-round ratios of several bench/run.sh runs.

usage: pool.py [--json OUT.json] RESULT.json [RESULT.json ...]

One run's ratio moves by a few hundredths with the machine's speed at the
time; runs made at different times of the same code, pooled, average
that drift out. For each workload and pair of proxies, this prints the
median of all rounds' ratios of requests per CPU-second (each round's two
proxies ran back to back) with its 95% confidence interval, and the
lowest and highest median of a single run; with HAProxy in the runs, the
same for the p99 latency ratio. The runs must have been made with the
same build profile, connections and duration, and all alternating or all
--together; their source revisions are listed, since a run records the
revision it was built from.
"""

import json
import statistics
import sys

from report import RATIOS, WORKLOADS, ci95, pair_label, round_ratios, write_json


def run_rounds(doc, workload, proxy):
    """The rounds one run measured of a proxy in a workload."""
    return doc.get("results", {}).get(workload, {}).get(proxy, {}).get("rounds", [])


def pool(docs):
    """{figure: {workload: {pair: summary}}} over the runs in `docs`."""
    out = {}
    figures = [("req_per_cpu_s", RATIOS)]
    # p99 latency only against HAProxy, the figure the bench holds it to, and
    # only from proxies measured one at a time (together, they share the CPUs).
    if not any(d.get("meta", {}).get("together") == 1 for d in docs):
        figures.append(("p99_ms", [("drawbridge", "haproxy")]))
    for figure, pairs in figures:
        for workload in WORKLOADS:
            for a, b in pairs:
                per_run = [round_ratios(run_rounds(d, workload, a), run_rounds(d, workload, b),
                                        figure) for d in docs]
                per_run = [xs for xs in per_run if xs]
                rounds = [x for xs in per_run for x in xs]
                if not rounds:
                    continue
                run_medians = [statistics.median(xs) for xs in per_run]
                out.setdefault(figure, {}).setdefault(workload, {})[f"{a}/{b}"] = {
                    "runs": len(per_run),
                    "rounds": len(rounds),
                    "median": statistics.median(rounds),
                    "ci95": ci95(rounds),
                    "run_medians": run_medians,
                }
    return out


def main(argv):
    json_out = None
    if len(argv) >= 2 and argv[0] == "--json":
        json_out, argv = argv[1], argv[2:]
    if not argv:
        sys.exit(__doc__)
    docs = []
    for path in argv:
        try:
            with open(path, encoding="utf-8") as f:
                docs.append(json.load(f))
        except (OSError, ValueError) as e:
            sys.exit(f"pool.py: cannot read {path}: {e}")
    for key in ("profile", "connections", "duration", "together"):
        # Runs from before --together existed measured one proxy at a time.
        default = 0 if key == "together" else None
        seen = sorted({str(d.get("meta", {}).get(key, default)) for d in docs})
        if len(seen) > 1:
            sys.exit(f"pool.py: the runs differ in {key} ({', '.join(seen)}); pool like with like")
    meta = docs[0].get("meta", {})
    revs = sorted({str(d.get("meta", {}).get("git_rev")) for d in docs})
    dates = sorted(str(d.get("meta", {}).get("date")) for d in docs)
    pooled = pool(docs)

    mode = "together" if meta.get("together") == 1 else "alternating"
    print(f"pooled: {len(docs)} runs from {dates[0]} to {dates[-1]}, "
          f"profile={meta.get('profile')} wrk -c{meta.get('connections')} "
          f"-d{meta.get('duration')} {mode}, revisions {', '.join(revs)}")
    titles = {"req_per_cpu_s": "req/CPU-s", "p99_ms": "p99 latency"}
    for figure, by_workload in pooled.items():
        print()
        print(f"{titles[figure]} ratio per round, all runs' rounds pooled: median "
              "(95% CI of the median; lowest-highest median of one run) [runs/rounds]")
        for workload in WORKLOADS:
            cells = []
            for pair, s in by_workload.get(workload, {}).items():
                a, b = pair.split("/")
                ci = s["ci95"]
                ci_text = f"CI {ci['low']:.3f}-{ci['high']:.3f}; " if ci else ""
                cells.append(f"{pair_label(a, b)} {s['median']:.3f}x ({ci_text}"
                             f"{min(s['run_medians']):.2f}-{max(s['run_medians']):.2f}) "
                             f"[{s['runs']}/{s['rounds']}]")
            if cells:
                print(f"  {workload:<7} " + "   ".join(cells))

    if json_out:
        doc = {
            "runs": [{"date": d.get("meta", {}).get("date"),
                      "git_rev": d.get("meta", {}).get("git_rev"),
                      "proxies": d.get("proxies"),
                      "rounds": d.get("meta", {}).get("rounds")} for d in docs],
            "meta": {k: meta.get(k) for k in ("profile", "connections", "duration", "together")},
            "pooled": pooled,
        }
        write_json(json_out, doc)


if __name__ == "__main__":
    main(sys.argv[1:])
