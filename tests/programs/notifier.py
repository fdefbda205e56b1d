"""A test executor that speaks sd_notify by hand (standard library only). NOTIFY_MODE says what:

  status-then-sleep     STATUS=waiting, then sleep (never READY=1)
  fork-ping:S:trigger   fork a child that sends WATCHDOG=1 every 0.2 s for S seconds, then
                        WATCHDOG=trigger; the main process itself never sends anything
  ping-then-sleep       STATUS=pinging, READY=1, then WATCHDOG=1 every $PING_EVERY seconds (default 1), forever
"""
import os
import signal
import socket
import sys
import time

address = os.environ["NOTIFY_SOCKET"]
target = "\0" + address[1:] if address.startswith("@") else address
mode, _, rest = os.environ.get("NOTIFY_MODE", "status-then-sleep").partition(":")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def send(sock: socket.socket, text: str) -> None:
    sock.sendto(text.encode(), target)


sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
print(f"{os.environ.get('ET_EXEC_ID')}: started mode={mode} pid={os.getpid()}", flush=True)
if mode == "status-then-sleep":
    send(sock, "STATUS=waiting")
    while True:
        time.sleep(3600)
elif mode == "fork-ping":
    seconds = float(rest.split(":")[0])
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            send(sock, "WATCHDOG=1")
            time.sleep(0.2)
        send(sock, "WATCHDOG=trigger")
        while True:
            time.sleep(3600)
    while True:
        time.sleep(3600)
elif mode == "ping-then-sleep":
    every = float(os.environ.get("PING_EVERY", "1"))
    send(sock, "STATUS=pinging")
    send(sock, "READY=1")
    while True:
        send(sock, "WATCHDOG=1")
        time.sleep(every)
