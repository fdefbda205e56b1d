"""An executor that hangs on purpose, to see the watchdog at work.

    python executors/et_hang.py --service-host http://127.0.0.1:8083/ --id 0 --hang-after 10

It works normally (run() loop, wait(), so heartbeats go out) for --hang-after seconds
(also $ET_HANG_AFTER; -1: never), then deadlocks the way real executors do: it blocks
forever on a lock nobody will release, inside a "driver call". With `watchdog:` set, the
supervisor misses its heartbeats, sends SIGABRT (the toolkit enabled faulthandler, so
every thread's stack lands in the instance's log, pointing at `driver_call`) and restarts it.
"""

import argparse
import os
import sys
import threading
import time

try:
    from exec_supervisor.executor import Executor
except ImportError:  # run from a checkout without `pip install -e .`: use the repo next door
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from exec_supervisor.executor import Executor

parser = argparse.ArgumentParser()
parser.add_argument("--hang-after", type=float, default=float(os.environ.get("ET_HANG_AFTER", "10")),
                    help="seconds of normal work before the hang; -1: never (default: $ET_HANG_AFTER or 10)")
et = Executor("Hang", parser=parser)
started = time.monotonic()
_lock = threading.Lock()


def driver_call() -> None:
    """A call into a driver that never returns."""
    _lock.acquire()
    _lock.acquire()  # the second acquire never returns: a deadlock


@et.run
def work() -> None:
    if 0 <= et.args.hang_after <= time.monotonic() - started:
        print(f"{et.exec_id}: entering the driver call that hangs", flush=True)
        et.status("in driver_call()")
        driver_call()
    et.status(f"working ({time.monotonic() - started:.0f}s)")
    et.wait(0.5)
