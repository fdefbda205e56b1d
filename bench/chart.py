#!/usr/bin/env python3
"""chart.png from results.json: the main figures as grouped bars, one panel each.

Run by report.chart() with an interpreter that has matplotlib (bench/.venv's when
the project's own does not): usage chart.py RESULTS.json OUT.png
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import ORDER, figure, fmt  # noqa: E402

# (workload, metric, title, log scale): log where the supervisors differ by orders of magnitude
PANELS = [
    ("spawn", "spawn_s", "spawn N (s)", False),
    ("restart", "restart_p50_ms", "restart latency p50 (ms)", True),
    ("stop", "stop_s", "stop-all (s)", False),
    ("idle", "cpu_pct", "idle CPU (% of a core)", True),
    ("idle", "rss_mib", "idle RSS (MiB)", False),
    ("churn", "restarts_per_s", "churn: restarts/s (higher is better)", False),
]
COLORS = {"exec-supervisor": "#d62728", "supervisord": "#1f77b4", "circus": "#2ca02c",
          "circus-cd0.1": "#98df8a", "limit": "#7f7f7f"}


def main() -> int:
    result = json.loads(Path(sys.argv[1]).read_text())
    rows = result["results"]
    sups = [s for s in ORDER if any(r["supervisor"] == s for r in rows)]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (w, metric, title, log) in zip(axes.flat, PANELS):
        sel = [r for r in rows if r["workload"] == w and r["metric"] == metric]
        ns = sorted({r["n"] for r in sel})
        ax.set_title(title, fontsize=11)
        if not sel:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            continue
        width = 0.8 / max(1, len(sups))
        for i, s in enumerate(sups):
            vals = []
            for n in ns:
                r = next((r for r in sel if r["n"] == n and r["supervisor"] == s), None)
                v = figure(r) if r else math.nan
                vals.append(v)
            xs = [j + (i - (len(sups) - 1) / 2) * width for j in range(len(ns))]
            bars = ax.bar(xs, [0 if math.isnan(v) else v for v in vals], width, label=s,
                          color=COLORS.get(s, None))
            for b, v in zip(bars, vals):
                if not math.isnan(v) and v > 0:
                    ax.annotate(fmt(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                                ha="center", va="bottom", fontsize=7, rotation=90,
                                xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(ns)), [f"N={n}" for n in ns])
        if log:
            ax.set_yscale("log")
        ax.margins(y=0.25)  # room for the value labels
        ax.grid(axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    m = result["meta"]["machine"]
    fig.suptitle(f"exec-supervisor benchmark ({result['meta']['mode']}): {m['cores']} cores, "
                 f"Linux {m['kernel']}, Python {m['python']}  (lower is better unless noted)", fontsize=11)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
