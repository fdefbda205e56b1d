"""The report's sections about size and features (report.py calls them): the machine's
limits, the N=10,000 targets, how each cost grows with N, and features on vs off.
Reads the rows of results.json; measures nothing."""

from __future__ import annotations

import math
from typing import Any

from report import ES, figure, fmt, noise

LIMIT = "limit"
BIG_N = 10_000

# (workload, metric, label, unit, supervisors): what the growth table follows
GROWTH = [
    ("spawn", "spawn_s", "spawn all", "s", (ES, LIMIT)),
    ("idle", "rss_mib", "idle RSS", "MiB", (ES, LIMIT)),
    ("idle", "pss_mib", "idle Pss", "MiB", (ES, LIMIT)),
    ("idle", "cpu_pct", "idle CPU", "% core", (ES, LIMIT)),
    ("control", "status_json_s", "`status --json`", "s", (ES,)),
    ("control", "status_table_s", "`status` (table)", "s", (ES,)),
    ("control", "metrics_scrape_ms", "one `/metrics` scrape", "ms", (ES,)),
    ("control", "health_worst_ms", "worst `/v1/health` while spawning", "ms", (ES,)),
    ("stop", "stop_s", "stop all", "s", (ES, LIMIT)),
]
# a segment slope this many times the one below it is "faster than linear" (from N=100, 1000, 10000:
# a quadratic cost gives 10, N log N about 1.3, linear 1; the lower segment carries the most noise)...
SUPERLINEAR_RATIO = 2.0
# ...unless the whole change is within this share of the largest value (noise, e.g. idle CPU at ~0)
NOISE_SHARE = 0.10


def _get(rows: list[dict[str, Any]], w: str, m: str, sup: str, n: int) -> float:
    for r in rows:
        if (r["workload"], r["metric"], r["supervisor"], r["n"]) == (w, m, sup, n):
            return figure(r)
    return math.nan


def _row(rows: list[dict[str, Any]], w: str, m: str, sup: str, n: int) -> dict[str, Any] | None:
    return next((r for r in rows if (r["workload"], r["metric"], r["supervisor"], r["n"]) == (w, m, sup, n)),
                None)


def limits_line(meta: dict[str, Any]) -> str:
    lim = meta.get("kernel_limits") or {}
    if not lim:
        return ""
    return ("**Limits:** " + ", ".join(f"{k} {v if v is not None else 'unlimited'}" for k, v in lim.items())
            + f"; RLIMIT_NOFILE for every supervisor {meta['nofile_used'][0]}/{meta['nofile_used'][1]}.\n")


def tenk_targets(rows: list[dict[str, Any]]) -> list[str]:
    """The N=10,000 targets, each against the limit loop of the same run."""
    ns = sorted({r["n"] for r in rows if r["supervisor"] == ES and r["n"] >= BIG_N})
    if not ns:
        return []
    n = ns[-1]
    L = [f"## N={n:,}: targets (exec-supervisor against the limit loop, same run)\n",
         "| target | exec-supervisor | limit loop | es/limit | verdict |", "|---|---|---|---|---|"]

    def line(label: str, w: str, m: str, ok: Any, scale: float = 1.0, unit: str = "") -> None:
        es, lim = _get(rows, w, m, ES, n) * scale, _get(rows, w, m, LIMIT, n) * scale
        r = _row(rows, w, m, ES, n)
        shown = "-" if math.isnan(es) else fmt(es) + unit + (f" ({noise(r)})" if r and noise(r) else "")
        verdict = "not measured" if math.isnan(es) else ("holds" if ok(es, lim) else "MISSED")
        ratio = f"{es / lim:.2g}x" if not (math.isnan(es) or math.isnan(lim) or lim == 0) else ""
        L.append(f"| {label} | {shown} | {'-' if math.isnan(lim) else fmt(lim) + unit} | {ratio} | {verdict} |")

    line("spawn all within 2x the limit loop", "spawn", "spawn_s",
         lambda e, l: not math.isnan(l) and e <= 2 * l, unit=" s")
    line("idle CPU at most 0.3 % of one core", "idle", "cpu_pct", lambda e, l: e <= 0.3, unit=" %")
    rss1k = _get(rows, "idle", "rss_mib", ES, 1000)
    line(f"RSS at most 2x the N=1000 figure ({fmt(rss1k)} MiB in this run)" if not math.isnan(rss1k)
         else "RSS at most 2x the N=1000 figure (N=1000 not in this run)", "idle", "rss_mib",
         lambda e, l: not math.isnan(rss1k) and e <= 2 * rss1k, unit=" MiB")
    line("Pss (smaps_rollup), for the record", "idle", "pss_mib", lambda e, l: True, unit=" MiB")
    line("restart after SIGKILL, p50 under 10 ms", "restart", "restart_p50_ms", lambda e, l: e < 10, unit=" ms")
    line("restart after SIGKILL, p95 (for the record)", "restart", "restart_p95_ms", lambda e, l: True, unit=" ms")
    line("stop all under 2 s", "stop", "stop_s", lambda e, l: e < 2, unit=" s")
    line("`status --json` under 1 s", "control", "status_json_s", lambda e, l: e < 1, unit=" s")
    line("`status` (the table) under 1.5 s", "control", "status_table_s", lambda e, l: e < 1.5, unit=" s")
    line("`/v1/health` answers in under 50 ms while N spawn (worst)", "control", "health_worst_ms",
         lambda e, l: e < 50, unit=" ms")
    line("`/v1/health` worst but the first request (for the record)", "control", "health_worst_after_first_ms",
         lambda e, l: True, unit=" ms")
    line("one `/metrics` scrape (for the record)", "control", "metrics_scrape_ms", lambda e, l: True, unit=" ms")
    L.append("")
    return L


def _lsq_slope(points: list[tuple[int, float]]) -> float:
    mx = sum(n for n, _ in points) / len(points)
    my = sum(v for _, v in points) / len(points)
    den = sum((n - mx) ** 2 for n, _ in points)
    return sum((n - mx) * (v - my) for n, v in points) / den if den else math.nan


def growth(rows: list[dict[str, Any]]) -> list[str]:
    """Each cost at every N measured, its per-instance slope, and a flag where it grows faster than linearly."""
    ns = sorted({r["n"] for r in rows if r["supervisor"] == ES and r["workload"] in ("spawn", "idle")})
    if len(ns) < 2:
        return []
    L = ["## How cost grows with N\n",
         "Per-instance slope: least squares over every N, and (v at the largest N - v at the smallest) / "
         "(difference in N). \"faster than linear\" flags a cost whose slope between the two largest N is more than "
         f"{SUPERLINEAR_RATIO:g}x its slope between the two smallest, unless the whole change is within "
         f"{NOISE_SHARE:.0%} of the largest value (noise).\n",
         "| cost | supervisor | " + " | ".join(f"N={n:,}" for n in ns)
         + " | slope, least squares | slope, ends | slope ratio, top/bottom segment | growth |",
         "|---|---|" + "---|" * len(ns) + "---|---|---|---|"]
    for w, m, label, unit, sups in GROWTH:
        for sup in sups:
            points = [(n, _get(rows, w, m, sup, n)) for n in ns]
            points = [(n, v) for n, v in points if not math.isnan(v)]
            if len(points) < 2:
                continue
            cells = [fmt(_get(rows, w, m, sup, n)) for n in ns]
            lsq = _lsq_slope(points)
            (n0, v0), (n1, v1) = points[0], points[-1]
            ends = (v1 - v0) / (n1 - n0)
            verdict, ratio_s = "linear or less", ""
            if len(points) >= 3:
                lo = (points[1][1] - points[0][1]) / (points[1][0] - points[0][0])
                hi = (points[-1][1] - points[-2][1]) / (points[-1][0] - points[-2][0])
                top = max(abs(v) for _, v in points)
                if lo > 0:
                    ratio_s = f"{hi / lo:.2g}"
                small = top == 0 or abs(v1 - v0) <= NOISE_SHARE * top
                if hi > 0 and (lo <= 0 or hi > SUPERLINEAR_RATIO * lo) and not small:
                    verdict = "**faster than linear**"
                elif small:
                    verdict = "flat (within noise)"
            else:
                verdict = "two points: no shape"
            L.append(f"| {label} [{unit}] | {sup} | " + " | ".join(cells)
                     + f" | {_slope(lsq, unit)} | {_slope(ends, unit)} | {ratio_s} | {verdict} |")
    L.append("")
    return L


def _slope(x: float, unit: str) -> str:
    if math.isnan(x):
        return "-"
    # per instance is tiny: show it per 1000 instances in the value's unit
    return f"{fmt(x * 1000)} {unit}/1000"


FEATURE_METRICS = [
    ("cpu_pct", "idle CPU", "% core"), ("rss_mib", "idle RSS", "MiB"), ("pss_mib", "idle Pss", "MiB"),
    ("restart_p50_ms", "restart p50", "ms"), ("restart_p95_ms", "restart p95", "ms"),
    ("churn_cpu_pct", "churn: own CPU", "% core"), ("churn_restarts_per_s", "churn: restarts/s", "/s"),
    ("metrics_scrape_ms", "first /metrics scrape over the listener", "ms"),
]


def features(rows: list[dict[str, Any]]) -> list[str]:
    sel = [r for r in rows if r["workload"] == "features" and r["supervisor"] == ES]
    if not sel:
        return []
    L = ["## Features on vs off (exec-supervisor, same run)\n",
         "Off: `incidents: off`, no `http:` listener, `ready: start_seconds`, instances `/bin/sleep`. "
         "On: incidents on (threshold 50 %, so that the restart workload's kills are counted but never "
         "open an incident, whose pacing is the feature, not a cost), `http.listen` on 127.0.0.1 with "
         "one `/metrics` scrape before the idle window (so prometheus_client is loaded, as under a "
         "Prometheus), `ready: notify` (each instance sends READY=1 from `programs/ready.pl`, then "
         "execs `/bin/sleep`). The farm's notify socket and the health extension are always there. "
         "Churn (instances exiting after 0.2-1.0 s) compares incidents and the listener only.\n",
         "| metric | N | off | on | on/off | on - off |", "|---|---|---|---|---|---|"]
    for m, label, unit in FEATURE_METRICS:
        for n in sorted({r["n"] for r in sel if r["metric"].endswith(":" + m)}):
            off = next((r for r in sel if r["metric"] == "off:" + m and r["n"] == n), None)
            on = next((r for r in sel if r["metric"] == "on:" + m and r["n"] == n), None)
            a = figure(off) if off else math.nan
            b = figure(on) if on else math.nan

            def c(r: dict[str, Any] | None) -> str:
                if r is None:
                    return ""
                v = figure(r)
                return "-" if math.isnan(v) else fmt(v) + (f" ({noise(r)})" if noise(r) else "")
            ratio = f"{b / a:.2g}x" if not (math.isnan(a) or math.isnan(b) or a == 0) else ""
            diff = f"{b - a:+.3g} {unit}" if not (math.isnan(a) or math.isnan(b)) else ""
            L.append(f"| {label} [{unit}] | {n} | {c(off)} | {c(on)} | {ratio} | {diff} |")
    L.append("")
    return L


def sections(rows: list[dict[str, Any]]) -> list[str]:
    return [*tenk_targets(rows), *growth(rows), *features(rows)]
