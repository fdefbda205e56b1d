"""Chatty instance: writes RATE MiB/s of text lines to stdout, paced by the clock.

os.write on fd 1 blocks when whatever stdout is (a file, or a supervisor's pipe)
does not keep up. A blocked writer does not catch up afterwards (no bursts above
RATE), so a supervisor that cannot relay the volume shows up as less output in
its log files than the instances were meant to write.
"""
import os
import sys
import time

rate = float(sys.argv[1]) * 1024 * 1024      # bytes per second
chunk_size = 64 * 1024
who = os.environ.get("ET_EXEC_ID", "chatty")
line = (f"[info] {who}: " + "x" * 100 + "\n").encode()
chunk = line * (chunk_size // len(line))
start = time.monotonic()
sent = 0.0
while True:
    due = (time.monotonic() - start) * rate
    if sent < due - chunk_size:
        sent = due - chunk_size  # fell behind (blocked): drop the backlog instead of bursting
    if sent < due:
        os.write(1, chunk)
        sent += len(chunk)
    else:
        time.sleep(min(0.05, (sent - due) / rate + 0.001))
