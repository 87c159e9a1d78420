#!/usr/bin/env python3
"""Turn the instruction counts of `bench/run.sh --instructions` into a table
and JSON.

usage: instructions.py RUN_DIR OUT.json [MORE_OUT.json ...]

RUN_DIR/instructions.tsv has one line per workload and proxy:
  workload proxy instructions requests wrk_output_file [I1mr D1mr D1mw Bcm Bim]
where instructions is callgrind's user-space total over the measured wrk run
(counting starts from zero just before it), requests is what wrk counted, and
the optional columns are callgrind's simulated first-level cache misses
(instruction fetches, data reads, data writes) and mispredicted branches
(conditional, indirect) over the same run ("-" when not counted).
"""

import os
import sys

from report import (LABEL, PROXIES, RATIOS, WORKLOADS, fmt_num, load_tsv, pair_label, ratio,
                    write_json)

# Figures per request: name, label, the tsv columns (after the fifth) summed.
FIGURES = [
    ("instructions", "instructions", None),
    ("l1i_misses", "L1i misses", [0]),
    ("l1d_misses", "L1d misses", [1, 2]),
    ("mispredicts", "mispredicts", [3, 4]),
]


def figure_total(row, columns):
    """The run's total of a figure, or None when callgrind did not count it."""
    if columns is None:
        return int(row[2])
    extra = row[5:]
    try:
        return sum(int(extra[c]) for c in columns)
    except (IndexError, ValueError):
        return None


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    run_dir, outs = sys.argv[1], sys.argv[2:]
    meta = {}
    for row in load_tsv(os.path.join(run_dir, "meta.env")):
        key, _, value = row[0].partition("=")
        meta[key] = value
    per_request = {}  # workload -> figure -> proxy -> value
    raw = {}
    for row in load_tsv(os.path.join(run_dir, "instructions.tsv")):
        wl, proxy, requests = row[0], row[1], int(row[3])
        raw.setdefault(wl, {})[proxy] = {"requests": requests}
        for name, _label, columns in FIGURES:
            total = figure_total(row, columns)
            if total is None:
                continue
            raw[wl][proxy][name] = total
            per_request.setdefault(wl, {}).setdefault(name, {})[proxy] = total / requests
    notes = [r[0] for r in load_tsv(os.path.join(run_dir, "notes.txt"))]

    proxies = [p for p in PROXIES
               if any(p in per_request.get(w, {}).get("instructions", {}) for w in WORKLOADS)]
    ratios = [(a, b) for a, b in RATIOS if a in proxies and b in proxies]
    head = ["workload", "per request"] + [LABEL[p] for p in proxies] \
        + [pair_label(a, b) for a, b in ratios]
    # Ratios are "requests per unit", as for req/CPU-s: above 1 favours the first.
    rows = []
    result = {}
    for wl in WORKLOADS:
        figures = per_request.get(wl)
        if not figures:
            continue
        result[wl] = {"per_request": figures, "raw": raw[wl], "ratios": {}}
        for name, label, _columns in FIGURES:
            figs = figures.get(name)
            if not figs:
                continue
            cells = [wl, label] + [fmt_num(figs.get(p), "int") for p in proxies]
            for a, b in ratios:
                r = ratio(figs.get(b), figs.get(a))
                result[wl]["ratios"].setdefault(name, {})[f"{a}/{b}"] = r
                cells.append(fmt_num(r, "ratio"))
            rows.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)] if rows else []
    print()
    print(f"drawbridge instruction counts  {meta.get('date', '')}  "
          f"profile={meta.get('profile', '?')}  "
          f"(valgrind --tool=callgrind, user space, per request, with its simulated "
          f"L1 caches and branch predictor; ratios: requests per unit, a/b)")
    for line in [head] + rows:
        print("  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w)
                        for i, (c, w) in enumerate(zip(line, widths))))
    for n in notes:
        print(f"note: {n}")
    doc = {
        "meta": meta,
        "proxies": proxies,
        "figures": {
            "instructions": "user-space instructions per request (callgrind)",
            "l1i_misses": "simulated L1 instruction-cache misses per request",
            "l1d_misses": "simulated L1 data-cache misses per request (reads and writes)",
            "mispredicts": "simulated mispredicted branches per request (conditional and indirect)",
            "ratios": "a/b of requests per unit of a figure: above 1 means a needs fewer",
        },
        "results": result,
        "notes": notes,
    }
    for out in outs:
        write_json(out, doc)


if __name__ == "__main__":
    main()
