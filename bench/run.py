#!/usr/bin/env python3
"""exec-supervisor vs supervisord vs circus vs the posix_spawn limit, side by side in one run.

    python bench/run.py --quick                      # a few minutes, N=100
    python bench/run.py --full                       # N = 100, 500, 1000
    python bench/run.py --smoke --out /tmp/x         # seconds; what tests/test_bench.py runs
    python bench/run.py --quick --only spawn,idle --supervisors exec-supervisor,limit
    python bench/run.py --full --supervisors exec-supervisor,limit --only spawn,idle,restart,stop,control \
        --n 100,1000,10000 --repeats 2     # N=10,000 and the cost growth table (about 9 minutes)

Writes report.md, results.json and chart.png into --out (default bench/results/).
Needs root for the kernel's proc connector (process events with kernel timestamps).
Peers come from bench/.venv (bash bench/setup_peers.sh); missing ones are skipped.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import costs  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
import workloads as wl  # noqa: E402
from adapters import BENCH, VENV, Adapter, Farm, all_adapters  # noqa: E402
from observer import Observer, ObserverUnavailable  # noqa: E402
from session import Ctx  # noqa: E402


def machine(loadavg_at_start: list[float]) -> dict[str, Any]:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(), "os": platform.platform(),
        "python": platform.python_version(), "python_exe": sys.executable,
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "loadavg_at_start": loadavg_at_start,
    }


def pick(adapters: list[Adapter], names: str | None) -> list[Adapter]:
    if not names:
        return adapters
    wanted = names.split(",")
    unknown = set(wanted) - {a.name for a in adapters}
    if unknown:
        sys.exit(f"unknown supervisor(s): {', '.join(sorted(unknown))}; "
                 f"known: {', '.join(a.name for a in adapters)}")
    return [a for a in adapters if a.name in wanted]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="tiny N and windows: checks that the harness works, measures nothing")
    ap.add_argument("--only", help=f"comma list of workloads: {','.join(wl.WORKLOADS)}")
    ap.add_argument("--supervisors", help="comma list: exec-supervisor,supervisord,circus,circus-cd0.1,limit")
    ap.add_argument("--n", help="override N for spawn/idle/restart/stop, e.g. 100,1000")
    ap.add_argument("--repeats", type=int, help="override repeats")
    ap.add_argument("--peers-max-n", type=int,
                    help="skip supervisord and circus above this N (default 2000: at 10,000 each takes minutes)")
    ap.add_argument("--features-n", type=int, help="N of the features on/off workload")
    ap.add_argument("--out", default=str(BENCH / "results"))
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--no-chart", action="store_true")
    args = ap.parse_args(argv)
    params = wl.MODES[args.mode or "quick"]
    if args.n:
        params.ns = [int(x) for x in args.n.split(",")]
    if args.repeats:
        params.repeats = args.repeats
    if args.peers_max_n:
        params.peers_max_n = args.peers_max_n
    if args.features_n:
        params.features_n = args.features_n
    which = list(wl.WORKLOADS) if not args.only else args.only.split(",")
    bad = set(which) - set(wl.WORKLOADS)
    if bad:
        sys.exit(f"unknown workload(s): {', '.join(sorted(bad))}; known: {', '.join(wl.WORKLOADS)}")
    random.seed(args.seed)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    marker = uuid.uuid4().hex[:12]
    # A SIGTERM to the harness must unwind through the finally blocks like Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    leftover: list[int] = []

    def final_sweep() -> None:
        leftover.extend(procs.sweep(marker))
        leftover.extend(procs.sweep(marker + "-svc"))
    atexit.register(final_sweep)

    # a pidfd per instance and more: room for 4 descriptors per instance of the largest N
    nofile = procs.raise_nofile(need=4 * max(params.ns) + 4096)
    try:
        obs = Observer()
    except ObserverUnavailable as e:
        print(f"bench: cannot observe processes: {e}", file=sys.stderr)
        return 2
    # tmpfs keeps chatty's ~100 MiB/s of log output off the disk (and its CPU out of the figures)
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    tmp = Path(tempfile.mkdtemp(prefix=f"exec-bench-{marker}-", dir=base))
    started = time.time()
    loadavg_at_start = list(os.getloadavg())

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    ctx = Ctx(obs=obs, marker=marker, tmp=tmp, env=procs_env(), log=log)
    adapters = pick(all_adapters(), args.supervisors)
    unavailable = {a.name: why for a in adapters if (why := a.available())}
    for name, why in unavailable.items():
        log(f"skipping {name}: {why}")
    active = [a for a in adapters if a.name not in unavailable]
    obs.matchers.extend([wl.SLEEPER_ARGV, wl.CHURN_ARGV, wl.HEARTBEAT_ARGV, wl.READY_ARGV,
                         [sys.executable, str(BENCH / "programs" / "chatty.py")]])

    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    skipped: list[str] = []

    def guarded(what: str, fn: Any, *a: Any) -> None:
        log(what)
        try:
            fn(*a)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one broken run must not lose the others' figures
            errors.append(f"{what}: {type(e).__name__}: {e}")
            log(f"  ERROR {e}\n{traceback.format_exc()}")

    interrupted = False
    try:
        session = SESSION_SET & set(which)
        if session:
            for n in params.ns:
                for rep in range(params.repeats):
                    # rotate the order so no supervisor always runs first (or right after a heavy one)
                    order = active[rep % len(active):] + active[:rep % len(active)] if active else []
                    for ad in order:
                        if n > params.peers_max_n and ad.name not in ("exec-supervisor", "limit"):
                            if rep == 0:
                                skipped.append(f"{ad.name} at N={n} (above --peers-max-n {params.peers_max_n})")
                                log(f"skipping {ad.name} at N={n}: above --peers-max-n {params.peers_max_n}")
                            continue
                        guarded(f"{'/'.join(sorted(session))} N={n} rep {rep + 1}/{params.repeats}: {ad.name}",
                                wl.session_workloads, ctx, params, ad, n, session, rows)
        if "churn" in which:
            for rep in range(params.churn_repeats):
                for ad in active:
                    guarded(f"churn N={params.churn_n} rep {rep + 1}: {ad.name}", wl.churn, ctx, params, ad, rows)
        if "chatty" in which:
            for rate in params.chatty_rates:
                for ad in active:
                    guarded(f"chatty N={params.chatty_n} {rate:g} MiB/s: {ad.name}",
                            wl.chatty, ctx, params, ad, rate, rows)
        if "events" in which:
            for rep in range(params.events_repeats):
                for ad in active:
                    guarded(f"events N={params.events_n} rep {rep + 1}: {ad.name}", wl.events, ctx, params, ad, rows)
        if "stop-early" in which:
            for rep in range(params.stop_early_repeats):
                for ad in active:
                    guarded(f"stop-early N={params.stop_early_n} rep {rep + 1}: {ad.name}",
                            wl.stop_early, ctx, params, ad, rows)
        if "scale" in which:
            for ad in active:
                if ad.name in ("limit", "circus-cd0.1"):
                    continue  # no control interface / same commands as plain circus
                guarded(f"scale N={params.scale_n}: {ad.name}", wl.scale, ctx, params, ad, rows)
        if "health" in which:
            for rep in range(params.repeats):
                for ad in active:
                    if ad.name == "exec-supervisor":  # readiness, watchdog, max_memory: no peer has them
                        guarded(f"health N={min(max(params.ns), costs.HEALTH_MAX_N)} rep {rep + 1}: {ad.name}",
                                costs.health, ctx, params, ad, rows)
        if "features" in which:
            for ad in active:
                if ad.name == "exec-supervisor":  # its own features switched on vs off, in one run
                    guarded(f"features on/off N={params.features_n}: {ad.name}", costs.features,
                            ctx, params, ad, rows)
        if "nofile" in which and params.nofile_n and any(a.name == "supervisord" for a in active):
            guarded(f"nofile probe N={params.nofile_n}: supervisord at soft limit 1024",
                    wl.nofile, ctx, params, rows)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaning up")
    finally:
        final_sweep()
        obs.close()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)

    farm0 = Farm(argv=wl.SLEEPER_ARGV, count=params.ns[0], env={})
    meta = {
        "mode": params.mode, "params": params.__dict__, "workloads": which,
        "marker": marker, "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1), "machine": machine(loadavg_at_start),
        "nofile_used": list(nofile),
        "kernel_limits": procs.kernel_limits(),
        "skipped": skipped,
        "observer": "Linux proc connector (netlink): fork/exec/exit with kernel CLOCK_MONOTONIC timestamps",
        "lost_event_batches": obs.lost_events,
        "loadavg_at_end": list(os.getloadavg()),
        "versions": {k: v for a in active for k, v in a.versions().items()},
        "supervisors": {a.name: {"blurb": a.blurb, "settings": a.settings(farm0),
                                 "command": " ".join(a.command(Path("<workdir>")))} for a in active},
        "unavailable": unavailable,
        "errors": errors, "forced_cleanup": ctx.forced,
        "leftover_after_run": sorted(set(leftover)),
        "interrupted": interrupted,
        "peers_venv": str(VENV),
    }
    meta["versions"]["psutil"] = __import__("psutil").__version__
    result = {"meta": meta, "results": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "report.md").write_text(report.render(result))
    if not args.no_chart:
        chart_note = report.chart(out / "results.json", out / "chart.png")
        if chart_note:
            log(chart_note)
    log(f"wrote {out / 'report.md'}, results.json" + ("" if args.no_chart else ", chart.png"))
    return 130 if interrupted else 0


SESSION_SET = wl.SESSION_WORKLOADS


def _raise_interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def procs_env() -> dict[str, str]:
    from adapters import env_base
    return env_base()


if __name__ == "__main__":
    sys.exit(main())
