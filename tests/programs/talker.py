"""A toolkit executor for the log relay tests. TALK_MODE picks what it does:

  count      log "pid=<pid> line <k>" for k = 0, 1, ... every TALK_EVERY s (toolkit log())
  raw        send each line of TALK_LINES as one datagram to $ET_LOG_SOCKET, from this process
             and from a grandchild that left our session and group; then sleep
  flood      send TALK_COUNT datagrams to $ET_LOG_SOCKET as fast as possible, then sleep
  seed       not here: the relay tests run executors/et_seed_style.py unmodified
"""
import json
import os
import socket
import sys
import time

from exec_supervisor.executor import Executor

mode = os.environ.get("TALK_MODE", "count")
et = Executor(os.environ.get("ET_NAME", "Talker"))


def datagram(text: str, level: str = "info") -> None:
    address = os.environ["ET_LOG_SOCKET"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(b"\0" + address[1:].encode() if address.startswith("@") else address)
    sock.send(json.dumps({"level": level, "message": text}).encode())
    sock.close()


print(f"{et.exec_id}: started mode={mode}", flush=True)
if mode == "count":
    every = float(os.environ.get("TALK_EVERY", "0.02"))
    k = 0
    while not et.stopped:
        et.log("info", f"pid={os.getpid()} line {k}")
        k += 1
        et.wait(every)
    sys.exit(0)
if mode == "raw":
    for text in os.environ["TALK_LINES"].split("|"):
        datagram(text)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            datagram("from a grandchild")
            time.sleep(60)  # alive while the daemon looks it up (the farm's stop ends it)
            os._exit(0)
        os._exit(0)
    os.wait()
if mode == "flood":
    address = os.environ["ET_LOG_SOCKET"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(b"\0" + address[1:].encode() if address.startswith("@") else address)
    sent = 0
    for k in range(int(os.environ.get("TALK_COUNT", "5000"))):
        try:
            sock.send(json.dumps({"level": "debug", "message": f"{et.exec_id}: flood {k}"}).encode())
            sent += 1
        except BlockingIOError:
            pass
    print(f"{et.exec_id}: flooded {sent}", flush=True)
et.wait()
