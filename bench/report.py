"""results.json -> report.md (and chart.png through chart.py)."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from adapters import BENCH, VENV

ES = "exec-supervisor"
ORDER = [ES, "supervisord", "circus", "circus-cd0.1", "limit"]
PEERS = ["supervisord", "circus", "circus-cd0.1", "limit"]

DESCRIPTIONS = {
    "spawn": "wall time from launching the supervisor until all N instances have exec'd",
    "idle": "with N running: the supervisor's CPU (% of one core), RSS, threads, open fds",
    "restart": "SIGKILL a random instance; time until its replacement has exec'd (p50 and p95 of all kills)",
    "stop": "SIGTERM to the supervisor until it and every instance have exited",
    "control": "exec-supervisor's control API: the worst and median latency of `GET /v1/health` (a new "
               "connection each time) from launch until all N have exec'd, and the worst but the first "
               "request's (which may wait for the rest of the daemon's start-up); with N running, the wall time of "
               "`exec-supervisor status --json` and `status` (the table) as an operator runs them, and of "
               "`/metrics` read over the control socket (the first scrape imports prometheus_client; the "
               "second, 1.1 s later, is the steady state)",
    "churn": "instances that exit after 0.2-1.0 s: restarts per second and the supervisor's CPU",
    "chatty": "instances writing MiB/s each: the supervisor's CPU and how much of the output landed in log files",
    "events": "crash storm (all instances SIGKILLed at once): time until all run again; "
              "for exec-supervisor (the only one with a log-API sink), log API entries delivered "
              "after the storm, when the last arrived, and the delivery rate (N / time until the "
              "first N entries arrived: the N crash events are published at once)",
    "stop-early": "SIGTERM once half of N are up: time until everything is gone (FAILED = not within 20 s)",
    "scale": "0 -> N -> 0 through the tool's own control command (time until reached, observed); status command time with N running",
    "nofile": "supervisord under a 1024 soft RLIMIT_NOFILE: instances it got up",
    "health": "exec-supervisor's health checks (at most N=1000): its CPU with N plain sleepers, with N "
              "instances sending WATCHDOG=1 every second, and with N under max_memory sampling",
    "features": "exec-supervisor with its cheap features on vs off, in the same run (own section below)",
}


def pct(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in 0..100."""
    v = sorted(values)
    if not v:
        return math.nan
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def figure(row: dict[str, Any]) -> float:
    s = [x for x in row["samples"] if not (isinstance(x, float) and math.isnan(x))]
    if not s:
        return math.nan
    if row["summary"] == "p95":
        return pct(s, 95)
    if row["summary"] == "max":
        return max(s)
    return statistics.median(s)


def noise(row: dict[str, Any]) -> str:
    s = [x for x in row["samples"] if not (isinstance(x, float) and math.isnan(x))]
    if len(s) < 2:
        return ""
    if row["summary"] == "p95":
        return f"max {fmt(max(s))}, n={len(s)}"
    if len(s) > 6:  # pooled events (kills): the spread of the distribution
        return f"IQR {fmt(pct(s, 25))}-{fmt(pct(s, 75))}, n={len(s)}"
    return f"{fmt(min(s))}-{fmt(max(s))}"


def fmt(x: float) -> str:
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "-"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.01:
        return f"{x:.3f}"
    return f"{x:.2g}"


def cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    v = figure(row)
    if math.isnan(v):
        return "FAILED" if "FAILED" in row["note"] or row["note"] else "-"
    n = noise(row)
    return f"{fmt(v)}" + (f" ({n})" if n else "")


def ratio(es: dict[str, Any] | None, peer: dict[str, Any] | None) -> str:
    if es is None or peer is None:
        return ""
    a, b = figure(es), figure(peer)
    if math.isnan(a) or math.isnan(b):
        return ""
    if b == 0:
        return "-" if a == 0 else "inf"
    return f"{a / b:.2g}x"


def index(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int, str], dict[str, Any]]:
    return {(r["workload"], r["metric"], r["n"], r["supervisor"]): r for r in rows}


def targets(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each benchmark target, at the largest N measured."""
    ix = index(rows)

    def get(w: str, m: str, sup: str = ES, n: int | None = None) -> tuple[float, int | None]:
        cands = [r for (rw, rm, rn, rs), r in ix.items() if rw == w and rm == m and rs == sup
                 and (n is None or rn == n)]
        if not cands:
            return math.nan, None
        # the targets are for N=1000 (a run up to 10,000 has its own section): that N when measured
        at_1000 = [r for r in cands if r["n"] == 1000]
        r = at_1000[0] if at_1000 else max(cands, key=lambda r: r["n"])
        return figure(r), r["n"]

    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None, n: int | None, target_n: int) -> str:
        if ok is None:
            return "not measured"
        tag = "holds" if ok else "MISSED"
        return tag + ("" if n in (None, target_n) else f" (at N={n}; the target is for N={target_n})")

    def add(label: str, value: float, n: int | None, ok: bool | None, extra: str = "",
            target_n: int = 1000) -> None:
        # the targets are for N = 1000, except where its workload fixes N
        # (churn and chatty: 100 instances; events: 500)
        shown = "-" if math.isnan(value) else fmt(value) + extra
        out.append((label, shown + (f" at N={n}" if n else ""),
                    verdict(None if math.isnan(value) else ok, n, target_n)))

    sp, n = get("spawn", "spawn_s")
    lim, _ = get("spawn", "spawn_s", "limit", n)
    add("spawn <= 2x the limit", sp, n, sp <= 2 * lim if not math.isnan(lim) else None,
        f" s (limit {fmt(lim)} s)")
    peers = [get("spawn", "spawn_s", p, n)[0] for p in ("supervisord", "circus")]
    peers = [p for p in peers if not math.isnan(p)]
    add("spawn at least 2x faster than both peers", sp, n,
        all(sp * 2 <= p for p in peers) if peers else None,
        f" s (peers {', '.join(fmt(p) for p in peers)} s)")
    cpu, n = get("idle", "cpu_pct")
    sv, _ = get("idle", "cpu_pct", "supervisord", n)
    add("idle CPU <= 0.3 % and <= supervisord", cpu, n,
        cpu <= 0.3 and (math.isnan(sv) or cpu <= sv), f" % (supervisord {fmt(sv)} %)")
    rss, n = get("idle", "rss_mib")
    add("idle RSS <= 40 MiB", rss, n, rss <= 40, " MiB")
    sv_rss, _ = get("idle", "rss_mib", "supervisord", n)
    add("idle RSS at or below supervisord's (same run)", rss, n,
        None if math.isnan(sv_rss) else rss <= sv_rss, f" MiB (supervisord {fmt(sv_rss)} MiB)")
    th = {r["n"]: figure(r) for r in rows if r["workload"] == "idle" and r["metric"] == "threads"
          and r["supervisor"] == ES}
    if th:
        add("threads independent of N", max(th.values()), max(th), len(set(th.values())) == 1,
            " (" + ", ".join(f"N={k}: {fmt(v)}" for k, v in sorted(th.items())) + ")")
    p50, n = get("restart", "restart_p50_ms")
    add("restart median < 10 ms", p50, n, p50 < 10, " ms")
    p95, n = get("restart", "restart_p95_ms")
    add("restart p95 < 25 ms", p95, n, p95 < 25, " ms")
    st, n = get("stop", "stop_s")
    add("stop-all < 0.5 s", st, n, st < 0.5, " s")
    rate, n = get("churn", "restarts_per_s")
    ccpu, _ = get("churn", "cpu_pct")
    lim_rate, _ = get("churn", "restarts_per_s", "limit", n)
    add("churn >= 150 restarts/s with < 10 % CPU", rate, n, rate >= 150 and ccpu < 10,
        f"/s at {fmt(ccpu)} % CPU (limit loop: {fmt(lim_rate)}/s)", target_n=100)
    lim_cpu, _ = get("churn", "cpu_pct", "limit", n)
    add("churn: own CPU at most 2x the limit loop's (same run)", ccpu, n,
        None if math.isnan(lim_cpu) else ccpu <= 2 * lim_cpu,
        f" % (limit loop {fmt(lim_cpu)} %" + (f", {ccpu / lim_cpu:.2g}x)" if lim_cpu and not math.isnan(lim_cpu) else ")"),
        target_n=100)
    ch = sorted(((float(r["metric"].split("@")[1].removesuffix("MiB/s")), figure(r), r["n"])
                 for r in rows if r["workload"] == "chatty" and r["metric"].startswith("cpu_pct@")
                 and r["supervisor"] == ES))
    if ch:
        hi_rate, hi, cn = ch[-1]
        if len(ch) > 1:
            base, base_what = ch[0][1], f"{fmt(ch[0][0])} MiB/s"
        else:
            base, _ = get("idle", "cpu_pct", ES, cn)
            base_what = "idle"
        grows = None if math.isnan(base) or math.isnan(hi) else hi - base > 0.5
        add("chatty: CPU does not grow with output", hi, cn,
            None if grows is None else not grows,
            f" % at {fmt(hi_rate)} MiB/s each vs {fmt(base)} % at {base_what}", target_n=100)
    ev, n = get("events", "events_per_s")
    add("events >= 500/s delivered", ev, n, ev >= 500, "/s", target_n=500)
    rec, n = get("events", "recover_s")
    add("all running again within 2 s of the storm", rec, n, rec <= 2, " s", target_n=500)
    up, n = get("scale", "scale_up_s")
    add("scale 0 -> N < 2 s", up, n, up < 2, " s")
    stt, n = get("scale", "status_s")
    add("status --json < 300 ms", stt * 1000 if not math.isnan(stt) else stt, n,
        stt < 0.3, " ms")
    se, n = get("stop-early", "stop_s")
    add("stop early: everything gone promptly (< 2 s)", se, n, se < 2, " s")
    # health: against the plain idle figure of the same run (same N, same machine, same minutes)
    base, n = get("health", "idle_cpu_pct")
    wd, _ = get("health", "watchdog_cpu_pct", ES, n)
    add("N instances sending WATCHDOG=1 every second: CPU < 5 %", wd, n, wd < 5,
        f" % (idle in the same run: {fmt(base)} %)")
    mm, _ = get("health", "max_memory_cpu_pct", ES, n)
    add("N instances under max_memory sampling: idle CPU <= 0.3 %", mm, n, mm <= 0.3,
        f" % (idle in the same run: {fmt(base)} %)")
    return out


def render(result: dict[str, Any]) -> str:
    meta, rows = result["meta"], result["results"]
    m = meta["machine"]
    sups = [s for s in ORDER if any(r["supervisor"] == s for r in rows)]
    extra_sups = sorted({r["supervisor"] for r in rows} - set(ORDER))
    L: list[str] = []
    L.append(f"# exec-supervisor benchmark ({meta['mode']} mode)\n")
    L.append(f"**Machine:** {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
             f"Linux {m['kernel']}, Python {m['python']}; "
             + ", ".join(f"{k} {v}" for k, v in sorted(meta["versions"].items()))
             + f"; RLIMIT_NOFILE {meta['nofile_used'][0]}/{meta['nofile_used'][1]}; "
             f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}, "
             f"at end {', '.join(f'{x:.2f}' for x in meta.get('loadavg_at_end', []))}.\n")
    from report_scale import limits_line, sections  # it imports this module
    if limits_line(meta):
        L.append(limits_line(meta))
    L.append(f"Run {meta['started']}, {meta['duration_s']} s, marker `{meta['marker']}`. "
             f"Observed from outside through the {meta['observer']}"
             + (f" ({meta['lost_event_batches']} dropped event batches!)" if meta["lost_event_batches"] else "")
             + ".\n")
    if meta["mode"] != "full":
        L.append(f"> {meta['mode']} mode: small N and short windows; the figures are indicative. "
                 "Targets are for `--full` (N = 1000).\n")
    L.append("Each cell: median over repeats (for restart latency: the percentile over all kills), "
             "then its noise in brackets: min-max over repeats, or the inter-quartile range of the "
             "pooled samples. `es/X` is exec-supervisor's figure divided by X's: below 1 means "
             "exec-supervisor is lower, which is better for every metric marked lower-is-better "
             "(times, CPU, memory) and worse for the higher-is-better ones (rates, delivered).\n")

    L.append("## Results\n")
    head = ["workload", "metric", "N", *sups, *extra_sups] + [f"es/{p}" for p in PEERS if p in sups]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    ix = index(rows)
    keys = []
    for r in rows:
        if r["workload"] == "features":  # a section of its own
            continue
        k = (r["workload"], r["metric"], r["n"])
        if k not in keys:
            keys.append(k)
    wl_order = list(DESCRIPTIONS)
    keys.sort(key=lambda k: (wl_order.index(k[0]) if k[0] in wl_order else 99, k[2]))
    for w, metric, n in keys:
        any_row = next(r for r in rows if (r["workload"], r["metric"], r["n"]) == (w, metric, n))
        unit = f" [{any_row['unit']}]" if any_row["unit"] else ""
        arrow = "↓" if any_row["better"] == "lower" else "↑"
        cells = [w, f"{metric}{unit} {arrow}", str(n)]
        cells += [cell(ix.get((w, metric, n, s))) for s in sups + extra_sups]
        cells += [ratio(ix.get((w, metric, n, ES)), ix.get((w, metric, n, p))) for p in PEERS if p in sups]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")

    notes = [f"- **{r['supervisor']}** {r['workload']} {r['metric']} N={r['n']}: {r['note']}"
             for r in rows if r["note"]]
    if notes:
        L.append("### Notes on cells\n")
        L.extend(notes)
        L.append("")

    L.append("## Targets (exec-supervisor)\n")
    L.append("| target | measured | verdict |")
    L.append("|---|---|---|")
    for t, v, ok in targets(rows, meta):
        L.append(f"| {t} | {v} | {ok} |")
    L.append("")

    L.extend(sections(rows))

    L.append("## Workloads\n")
    for w, d in DESCRIPTIONS.items():
        if w in meta["workloads"]:
            L.append(f"- **{w}**: {d}")
    p = meta["params"]
    L.append(f"\nParameters: N={p['ns']}, {p['repeats']} repeat(s), idle window {p['idle_s']} s "
             f"after {p['settle_s']} s settle, {p['kills']} kills per repeat; churn N={p['churn_n']} "
             f"over {p['churn_s']} s; chatty N={p['chatty_n']} at {p['chatty_rates']} MiB/s each over "
             f"{p['chatty_s']} s; events N={p['events_n']}; stop-early N={p['stop_early_n']}; "
             f"scale N={p['scale_n']}; nofile probe N={p['nofile_n']}; features on/off N={p.get('features_n')} "
             f"({p.get('features_repeats')} pair(s)); supervisord and circus skipped above "
             f"N={p.get('peers_max_n')}. Instances: `/bin/sleep 100000` "
             "(spawn, idle, restart, stop, events, stop-early, scale), `bench/programs/churn.sh`, "
             "`bench/programs/chatty.py`.\n")

    L.append("## Settings\n")
    for name, s in meta["supervisors"].items():
        L.append(f"**{name}** ({s['blurb']}): `{s['command']}`\n")
        for k, v in s["settings"].items():
            L.append(f"- {k}: {v}")
        L.append("")
    L.append("Every supervisor runs in its own session with RLIMIT_NOFILE raised to the hard limit "
             "(the `nofile` row shows supervisord at the usual 1024), stdin from /dev/null, and "
             "the instances' output going to per-instance log files (circus: one file per watcher) "
             "on tmpfs.\n")

    L.append("## Run health\n")
    L.append(f"- unavailable: {meta['unavailable'] or 'none'}")
    L.append(f"- skipped: {', '.join(meta.get('skipped') or []) or 'none'}")
    L.append(f"- errors: {meta['errors'] or 'none'}")
    L.append(f"- supervisors that had to be killed after their workload: {meta['forced_cleanup'] or 'none'}")
    L.append(f"- processes left behind that the final sweep killed: {meta['leftover_after_run'] or 'none'}")
    if meta.get("interrupted"):
        L.append("- the run was INTERRUPTED; figures are partial")
    L.append("")
    return "\n".join(L) + "\n"


def chart(results_json: Path, png: Path) -> str | None:
    """Draw with whichever interpreter has matplotlib: this one, else bench/.venv's."""
    script = BENCH / "chart.py"
    for py in (sys.executable, str(VENV / "bin" / "python")):
        if not Path(py).exists():
            continue
        r = subprocess.run([py, "-c", "import matplotlib"], capture_output=True)
        if r.returncode == 0:
            r = subprocess.run([py, str(script), str(results_json), str(png)],
                               capture_output=True, text=True)
            return None if r.returncode == 0 else f"chart failed: {r.stderr[-500:]}"
    return "no matplotlib (bash bench/setup_peers.sh installs it into bench/.venv): no chart.png"


if __name__ == "__main__":
    # Re-render report.md and chart.png of an earlier run: python bench/report.py DIR
    import json

    folder = Path(sys.argv[1])
    data = json.loads((folder / "results.json").read_text())
    (folder / "report.md").write_text(render(data))
    note = chart(folder / "results.json", folder / "chart.png")
    print(note or f"rewrote {folder / 'report.md'} and chart.png")
