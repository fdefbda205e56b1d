"""An executor that loads slowly (a stand-in for a big model), then serves; for `ready: notify`.

    python executors/et_slow_model.py --service-host http://127.0.0.1:8083/ --id 0 --load-seconds 90

It says READY=1 only once loaded (et.ready()), so under `ready: notify` the supervisor
shows it `starting` until then, and `start_timeout` catches a load that never ends
(`--load-seconds -1` loads forever). Its status line tells how far it got.
Options may also come from the environment: ET_LOAD_SECONDS.
"""

import argparse
import os
import sys
import time

try:
    from exec_supervisor.executor import Executor
except ImportError:  # run from a checkout without `pip install -e .`: use the repo next door
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from exec_supervisor.executor import Executor

parser = argparse.ArgumentParser()
parser.add_argument("--load-seconds", type=float, default=float(os.environ.get("ET_LOAD_SECONDS", "20")),
                    help="how long loading takes; -1: forever (default: $ET_LOAD_SECONDS or 20)")
et = Executor("SlowModel", parser=parser)
seconds = et.args.load_seconds
print(f"{et.exec_id}: loading the model ({'forever' if seconds < 0 else f'{seconds:g}s'})", flush=True)
et.status("loading the model")
started = time.monotonic()
while seconds < 0 or time.monotonic() - started < seconds:
    if et.wait(min(1.0, seconds) if seconds > 0 else 1.0):  # a real loader would not wait: it would compute
        sys.exit(0)
    et.status(f"loading the model ({time.monotonic() - started:.0f}s)")
et.status("model loaded")
et.ready()  # run() would say it too; saying it here makes the moment explicit
print(f"{et.exec_id}: model loaded after {time.monotonic() - started:.1f}s", flush=True)
jobs = 0


@et.run
def serve() -> None:
    global jobs
    jobs += 1
    et.status(f"model loaded, {jobs} jobs done")
    et.wait(5)
