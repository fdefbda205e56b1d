#!/usr/bin/env python3
"""Local WeFastAPI log API for the events workload, in its own process so that
serving requests does not compete with the harness's observer for the GIL.

Uses exec_supervisor.devservice.DevService when the project has it; otherwise a
minimal stand-in (POST <url>api/bases/logs/ -> 200 {}). Either way it appends
"<CLOCK_MONOTONIC ns> <entries so far>" to ARRIVALS whenever the count grows,
and writes its URL to READY once listening. Binds 127.0.0.1 only.

Usage: logapi_server.py READY ARRIVALS
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class _Handler(BaseHTTPRequestHandler):
    entries: list[dict[str, Any]] = []
    lock = threading.Lock()
    on_entry: Callable[[int], None] = staticmethod(lambda n: None)
    protocol_version = "HTTP/1.1"   # keep-alive: a forwarder may reuse its connection

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path.rstrip("/") != "/api/bases/logs":
            self._answer(404, b'{"detail":"Not Found"}')
            return
        try:
            data = json.loads(body)
        except ValueError:
            self._answer(422, b'{"detail":"bad json"}')
            return
        items = data if isinstance(data, list) else [data]
        with self.lock:
            self.entries.extend(items)
            n = len(self.entries)
        self.on_entry(n)
        self._answer(200, b"{}")

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # silence per-request lines
        pass


def main() -> int:
    ready, arrivals_path = sys.argv[1], sys.argv[2]
    arrivals = open(arrivals_path, "a", buffering=1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    kind = "stand-in (bench/logapi_server.py)"
    try:
        from exec_supervisor.devservice import DevService  # type: ignore[import-not-found]
    except ImportError:
        DevService = None  # noqa: N806
    if DevService is not None:
        svc = DevService(host="127.0.0.1", port=0)
        svc.start()
        url = svc.url
        kind = "exec_supervisor.devservice.DevService"

        def count() -> int:
            return len(svc.entries)
        # DevService keeps entries in memory; sample the count often for arrival times.
        last = 0
        with open(ready, "w") as f:
            f.write(json.dumps({"url": url, "kind": kind}))
        while not stop.wait(0.002):
            n = count()
            if n != last:
                arrivals.write(f"{time.monotonic_ns()} {n}\n")
                last = n
        svc.stop()
        return 0

    lock = threading.Lock()

    def on_entry(n: int) -> None:
        with lock:
            arrivals.write(f"{time.monotonic_ns()} {n}\n")
    _Handler.on_entry = staticmethod(on_entry)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with open(ready, "w") as f:
        f.write(json.dumps({"url": url, "kind": kind}))
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
