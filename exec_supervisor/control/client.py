"""The CLI side of the control API: finding the daemon's socket and talking HTTP over it.

The transport is the standard library's http.client with a connect() that opens an
AF_UNIX socket: the HTTP itself (chunked streams included) is http.client's. Owns
requests, errors and exit codes; it must not format anything for humans (render.py).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urlencode

DEFAULT_TIMEOUT = 30.0
# The unit's StateDirectory=: where the socket is when the config leaves state_dir to systemd.
SYSTEMD_STATE_DIRECTORY = "/var/lib/exec-supervisor"
EXIT_FAILED, EXIT_USAGE, EXIT_NO_DAEMON = 1, 2, 3


class ClientError(Exception):
    """One line for the operator, and the exit code that goes with it."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NoDaemon(ClientError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_NO_DAEMON)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (the Host header says localhost)."""

    def __init__(self, path: str, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


# --------------------------------------------------------------------------- finding the socket


def socket_candidates(config_path: str) -> list[Path]:
    """Where the daemon of this config listens, read the same way config.load resolves it.

    Only control.socket and supervisor.state_dir are read (a config being edited may be
    invalid, and `reload` must still reach the daemon to report that). When the config
    leaves state_dir unset, a daemon under systemd uses StateDirectory, which the caller's
    shell does not know: that location is tried second.
    """
    import yaml

    path = Path(config_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ClientError(f"{config_path}: no such config file (pass -c CONFIG or --socket PATH)", EXIT_USAGE) from None
    except OSError as exc:
        raise ClientError(f"{config_path}: cannot read it: {exc.strerror or exc}", EXIT_USAGE) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ClientError(f"{config_path}: not valid YAML ({str(exc).splitlines()[0]}); "
                          "pass --socket PATH to reach the daemon", EXIT_USAGE) from None
    base = Path(os.path.abspath(path)).parent
    data = data if isinstance(data, dict) else {}
    control = data.get("control") if isinstance(data.get("control"), dict) else {}
    supervisor = data.get("supervisor") if isinstance(data.get("supervisor"), dict) else {}

    def absolute(text: str) -> Path:
        return Path(os.path.normpath(os.path.join(base, os.path.expanduser(text))))

    if isinstance(control.get("socket"), str) and control["socket"]:
        return [absolute(control["socket"])]
    state_dir = supervisor.get("state_dir")
    if isinstance(state_dir, str) and state_dir:
        return [absolute(state_dir) / "control.sock"]
    candidates = []
    env_state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if env_state:
        candidates.append(absolute(env_state) / "control.sock")
    candidates.append(absolute(".exec-supervisor") / "control.sock")
    candidates.append(Path(SYSTEMD_STATE_DIRECTORY) / "control.sock")
    return candidates


def pick_socket(config_path: str | None, socket_path: str | None) -> Path:
    if socket_path:
        return Path(socket_path)
    candidates = socket_candidates(config_path or "configs/farm.yaml")
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return candidates[0]


# --------------------------------------------------------------------------- requests


class Client:
    def __init__(self, socket_path: Path, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _connect(self, method: str, path: str, body: Any, timeout: float | None) -> http.client.HTTPResponse:
        connection = UnixHTTPConnection(str(self.socket_path), timeout)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            connection.request(method, path, body=payload, headers=headers)
            return connection.getresponse()
        except (FileNotFoundError, ConnectionRefusedError):
            connection.close()
            raise NoDaemon(f"no daemon is running (nothing listens on {self.socket_path})") from None
        except PermissionError:
            connection.close()
            raise ClientError(f"cannot connect to {self.socket_path}: permission denied "
                              "(the daemon's control.socket_mode / control.group decide who may)") from None
        except socket.timeout:
            connection.close()
            raise ClientError(f"the daemon did not answer within {timeout:g}s") from None
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            connection.close()
            raise ClientError("the daemon closed the connection without answering (is it stopping?)") from None
        except OSError as exc:
            connection.close()
            if "too long" in str(exc):
                raise ClientError(f"socket path {self.socket_path} is too long for a Unix socket", EXIT_USAGE) from None
            raise ClientError(f"cannot talk to the daemon on {self.socket_path}: {exc.strerror or exc}") from None

    def fetch(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> tuple[int, bytes]:
        """One request; returns (HTTP status, raw body)."""
        timeout = timeout if timeout is not None else self.timeout
        response = self._connect(method, path, body, timeout)
        try:
            return response.status, response.read()
        except socket.timeout:
            raise ClientError(f"the daemon did not finish answering within {timeout:g}s") from None
        except (OSError, http.client.HTTPException):
            raise ClientError("the daemon closed the connection mid-answer (is it stopping?)") from None
        finally:
            response.close()

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> tuple[int, Any]:
        """One request; returns (HTTP status, decoded JSON body)."""
        status, raw = self.fetch(method, path, body, timeout)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"error": raw.decode(errors="replace").strip() or f"HTTP {status}"}
        return status, data

    def stream(self, path: str) -> Iterator[bytes]:
        """A streamed GET (follow modes): chunks as the daemon sends them; errors raise ClientError."""
        response = self._connect("GET", path, None, None)
        try:
            if response.status >= 300:
                raw = response.read()
                try:
                    message = json.loads(raw).get("error") or f"HTTP {response.status}"
                except (ValueError, AttributeError):
                    message = raw.decode(errors="replace").strip() or f"HTTP {response.status}"
                raise ClientError(message, exit_code_for(response.status))
            while True:
                try:
                    chunk = response.read1(65536)
                except (OSError, http.client.HTTPException):
                    return  # the daemon went away: the stream ends
                if not chunk:
                    return
                yield chunk
        finally:
            response.close()


def exit_code_for(status: int) -> int:
    """HTTP status -> CLI exit code: caller mistakes are usage (2), the daemon's side is failed (1)."""
    if status < 300:
        return 0
    if status in (409,) or status >= 500:
        return EXIT_FAILED
    return EXIT_USAGE


def path_with_query(path: str, **query: Any) -> str:
    items = {k: v for k, v in query.items() if v is not None}
    return f"{path}?{urlencode(items)}" if items else path


def log_path(exec_id: str) -> str:
    return "/v1/logs/" + quote(exec_id, safe="")


def wait_gone(client: Client, timeout: float) -> bool:
    """After shutdown: True once the daemon no longer answers (it closes the socket last)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.call("GET", "/v1/health", timeout=5)
        except NoDaemon:
            return True
        except ClientError:
            pass  # closing right now
        time.sleep(0.1)
    return False
