"""An executor that needs a service: it fails while a cause file exists, like one whose service is down.

    outage.py SHARED_CAUSE [OWN_CAUSE] [--message TEXT]

Each start prints `started t=<time>`. If SHARED_CAUSE exists, or OWN_CAUSE holds a number above 0
(decremented at each start: that many crashes of this instance alone), it prints a last line like
`ConnectionRefusedError: [Errno 111] Connection refused: 127.0.0.1:40123` (a random port, so
instances' lines differ in their numbers) and exits 1. Otherwise it runs until SIGTERM.
"""
import os
import random
import signal
import sys
import time

me = os.environ.get("ET_EXEC_ID", "?")
print(f"{me}: started t={time.time():.3f}", flush=True)
shared = sys.argv[1]
own = sys.argv[2] if len(sys.argv) > 2 else None
fail = os.path.exists(shared)
if not fail and own and os.path.exists(own):
    with open(own) as handle:
        left = int(handle.read().strip() or 0)
    if left > 0:
        with open(own, "w") as handle:
            handle.write(str(left - 1))
        fail = True
if fail:
    message = os.environ.get("OUTAGE_MESSAGE", "ConnectionRefusedError: [Errno 111] Connection refused: 127.0.0.1:{port}")
    print(message.format(port=random.randint(1024, 65000)), flush=True)
    sys.exit(1)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(3600)
