"""The opt-in relay (`service.relay: true`): a loopback HTTP listener of the daemon's for
executors that post to `--service-host` themselves and cannot be changed.

Each instance gets `--service-host http://127.0.0.1:<port>/<exec id>/` (and the same in
ET_SERVICE_HOST). Executors append API paths to it, as the seed does. Then:

- `POST <exec id>/api/bases/logs/` with `{"level", "message"}`: the line goes to the
  supervisor's executor-line spool (durable, ordered, retried, with the supervisor's
  credentials, rate-limited per instance, prefix made the sender's) and the answer is
  200 `{}` at once, as the service's. A body the service would refuse gets the 422 the
  service would give.
- any other request under `<exec id>/`: forwarded to the real `service.host` with the
  supervisor's credentials added (Authorization: Bearer, unless the request brings its
  own), the body bounded (MAX_BODY), connect and read timeouts, at most PROXY_PARALLEL at
  a time; the service's status, Content-Type and body are passed back (a 502 JSON answer
  when the service cannot be reached).
- refused: a path outside `<exec id>/` of a live instance of this farm (404), a
  connection whose peer is not a process of that instance (403: the TCP peer's socket is
  looked up in /proc and must belong to the instance's process tree), bodies over
  MAX_BODY (413).

Built on the control API's h11 server (control/httpserver.py) and the forwarder's HTTP
client (events/httpclient.py): no new HTTP stack. It must not touch the spool directly
(the forwarder's add_line does) nor start or stop instances.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from ..control.httpserver import HttpError, HttpServer, Request, Response, json_response
from ..events.httpclient import Channel, TransportError
from ..supervise import procfs

__all__ = ["Relay", "LOG_PATH", "MAX_BODY"]

log = logging.getLogger("exec_supervisor")

LOG_PATH = "api/bases/logs/"
MAX_BODY = 1024 * 1024
PROXY_PARALLEL = 8
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 30.0
PORT_FILE = "relay.json"
_PATH_RE = re.compile(r"^/(ET-[^/\s]+-\d+)/(.*)$", re.S)
# Request headers passed on to the service; everything else (cookies, the executor's own
# Authorization) stays here: the supervisor's credentials are the ones that count.
_PASSED = ("content-type", "accept", "accept-language")
_LEVELS = ("debug", "info", "warning", "error")


def _tcp_inode(client_port: int, server_port: int) -> int | None:
    """The inode of the client's end of a loopback TCP connection, from /proc/net/tcp."""
    want_local = f"0100007F:{client_port:04X}"
    want_remote = f"0100007F:{server_port:04X}"
    try:
        with open("/proc/net/tcp", "rb") as handle:
            data = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    for line in data.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[1] == want_local and fields[2] == want_remote:
            return int(fields[9])
    return None


def _holds_socket(pids: set[int], inode: int) -> bool:
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") == target:
                    return True
            except OSError:
                continue
    return False


class _Routes:
    """What HttpServer asks for: resolve(request) -> handler. Every path is the relay's."""

    def __init__(self, relay: "Relay") -> None:
        self._relay = relay

    def resolve(self, request: Request) -> Any:
        return self._relay.handle


class Relay:
    """The listener and its two jobs (spool log lines, proxy the rest). start()/stop() on the loop."""

    def __init__(self, daemon: Any) -> None:
        self._daemon = daemon
        self._server = HttpServer(_Routes(self), MAX_BODY)  # type: ignore[arg-type]
        self._parallel = asyncio.Semaphore(PROXY_PARALLEL)
        self.port = 0
        self.relayed = 0
        self.proxied = 0
        self.refused = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        """Listen on 127.0.0.1, on the port of the last run when free (running executors keep theirs)."""
        state = Path(self._daemon.config.state_dir) / PORT_FILE
        try:
            previous = int(json.loads(state.read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            previous = 0
        for port in ([previous] if previous else []) + [0]:
            try:
                self.port = (await self._server.start_tcp("127.0.0.1", port))[1]
                break
            except OSError:
                continue
        else:  # pragma: no cover - port 0 always binds
            raise OSError("no port for the relay")
        if self.port != previous:
            try:
                state.write_text(json.dumps({"port": self.port}) + "\n")
            except OSError as exc:
                log.warning("relay: cannot record its port in %s: %s", state, exc.strerror or exc)

    async def stop(self) -> None:
        await self._server.close()

    # ------------------------------------------------------------------ requests

    def _sender(self, request: Request) -> tuple[Any, str]:
        """(instance, the rest of the path) of a request, or an HttpError."""
        match = _PATH_RE.match(request.path)
        if match is None:
            raise HttpError(404, "the relay serves only http://127.0.0.1:<port>/<exec id>/ (the "
                                 "--service-host each instance was given)")
        exec_id, rest = match.group(1), match.group(2)
        engine = self._daemon.engine
        instance = engine.instances.get(exec_id)
        if instance is None or instance.pid is None:
            raise HttpError(404, f"{exec_id} is not a running instance of this farm")
        peer = request.peer
        inode = _tcp_inode(peer[1], self.port) if peer else None
        pids = {instance.pid} | procfs.descendants([instance.pid])
        if inode is None or not _holds_socket(pids, inode):
            self.refused += 1
            raise HttpError(403, f"this connection does not come from a process of {exec_id}")
        return instance, rest

    async def handle(self, request: Request) -> Response:
        instance, rest = self._sender(request)
        if request.method == "POST" and rest == LOG_PATH:
            return await self._log_line(instance, request)
        return await self._proxy(request, rest)

    async def _log_line(self, instance: Any, request: Request) -> Response:
        body = await request.read()
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        level = data.get("level") if isinstance(data, dict) else None
        message = data.get("message") if isinstance(data, dict) else None
        if level not in _LEVELS or not isinstance(message, str):
            # What the service itself would answer, so the executor's own handling stays right.
            return json_response({"detail": [{"type": "invalid", "loc": ["body"],
                                              "msg": "expected {\"level\": debug|info|warning|error, "
                                                     "\"message\": text}"}]}, 422)
        forwarder = self._daemon.forwarder
        if forwarder is None:
            raise HttpError(503, "event forwarding is off (events.forward: false)")
        forwarder.add_line(instance.spec.exec_id, level, message)
        self.relayed += 1
        return json_response({})

    async def _proxy(self, request: Request, rest: str) -> Response:
        config = self._daemon.config
        url = config.service.host + rest + (("?" + request.query_string) if request.query_string else "")
        body = await request.read()
        headers = {name: request.headers[name] for name in _PASSED if name in request.headers}
        forwarder = self._daemon.forwarder
        token = forwarder.bearer() if forwarder is not None else None
        if token:
            headers["Authorization"] = "Bearer " + token
        async with self._parallel:
            loop = asyncio.get_running_loop()
            try:
                answer = await loop.run_in_executor(None, _forward, request.method, url, body, headers)
            except TransportError as exc:
                return json_response({"detail": f"the relay could not reach the service: {exc}"}, 502)
        self.proxied += 1
        return Response(answer.body, answer.status, answer.headers.get("Content-Type") or "application/json")


def _forward(method: str, url: str, body: bytes, headers: dict[str, str]) -> Any:
    channel = Channel(url)
    try:
        return channel.request(method, url, body or None, headers, (CONNECT_TIMEOUT, READ_TIMEOUT))
    finally:
        channel.close()
