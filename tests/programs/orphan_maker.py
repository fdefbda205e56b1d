"""An executor that leaves orphans behind: N times, a grandchild is re-parented to the supervisor
(its parent exits at once) and then exits itself, so only the supervisor can reap it.
Prints 'orphans done' after the last one has exited; then sleeps until SIGTERM."""
import os
import signal
import sys
import time

count = int(os.environ.get("ORPHANS", "10"))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
for _ in range(count):
    child = os.fork()
    if child == 0:
        if os.fork() == 0:
            time.sleep(0.05)
            os._exit(0)
        os._exit(0)
    os.waitpid(child, 0)
time.sleep(0.2)
print("orphans done", flush=True)
while True:
    time.sleep(3600)
