#!/usr/bin/env python3
"""Turn the instruction counts of `bench/run.sh --instructions` into a table
and JSON.

usage: instructions.py RUN_DIR OUT.json [MORE_OUT.json ...]

RUN_DIR/instructions.tsv has one line per workload and proxy:
  workload proxy instructions requests wrk_output_file
where instructions is callgrind's user-space total over the measured wrk run
(counting starts from zero just before it) and requests is what wrk counted.
"""

import os
import sys

from report import LABEL, PROXIES, RATIOS, WORKLOADS, fmt_num, load_tsv, ratio, write_json


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    run_dir, outs = sys.argv[1], sys.argv[2:]
    meta = {}
    for row in load_tsv(os.path.join(run_dir, "meta.env")):
        key, _, value = row[0].partition("=")
        meta[key] = value
    per_request = {}
    raw = {}
    for wl, proxy, ir, requests, _out in load_tsv(os.path.join(run_dir, "instructions.tsv")):
        per_request.setdefault(wl, {})[proxy] = int(ir) / int(requests)
        raw.setdefault(wl, {})[proxy] = {"instructions": int(ir), "requests": int(requests)}
    notes = [r[0] for r in load_tsv(os.path.join(run_dir, "notes.txt"))]

    proxies = [p for p in PROXIES if any(p in per_request.get(w, {}) for w in WORKLOADS)]
    ratios = [(a, b) for a, b in RATIOS if a in proxies and b in proxies]
    short = {"haproxy": "HAProxy", "drawbridge": "db", "bare": "bare"}
    head = ["workload"] + [LABEL[p] for p in proxies] + [f"{short[a]}/{short[b]}" for a, b in ratios]
    # Ratios are "requests per instruction", as for req/CPU-s: above 1 favours the first.
    rows = []
    result = {}
    for wl in WORKLOADS:
        figs = per_request.get(wl)
        if not figs:
            continue
        cells = [wl] + [fmt_num(figs.get(p), "int") for p in proxies]
        result[wl] = {"instructions_per_request": figs, "raw": raw[wl], "ratios": {}}
        for a, b in ratios:
            r = ratio(figs.get(b), figs.get(a))
            result[wl]["ratios"][f"{a}/{b}"] = r
            cells.append(fmt_num(r, "ratio"))
        rows.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)] if rows else []
    print()
    print(f"drawbridge instruction counts  {meta.get('date', '')}  "
          f"profile={meta.get('profile', '?')}  "
          f"(valgrind --tool=callgrind, user space, per request; "
          f"ratios: requests per instruction, a/b)")
    for line in [head] + rows:
        print("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                        for i, (c, w) in enumerate(zip(line, widths))))
    for n in notes:
        print(f"note: {n}")
    doc = {
        "meta": meta,
        "proxies": proxies,
        "figures": {
            "instructions_per_request": "user-space instructions per request (callgrind)",
            "ratios": "a/b of requests per instruction: above 1 means a needs fewer",
        },
        "results": result,
        "notes": notes,
    }
    for out in outs:
        write_json(out, doc)


if __name__ == "__main__":
    main()
