"""`exec-supervisor dev-service`: the stand-in in the foreground, printing every entry it receives.

Owns the operator-facing side: the banner (which never shows a secret), one line per
entry the way the service's loguru sink shows it, and stopping on Ctrl-C or SIGTERM.
It must not change how the service answers (wire.py, service.py).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

from .service import DevService
from .wire import LOG_PATH, TOKEN_PATH

_print_lock = threading.Lock()


def format_entry(entry: dict[str, Any]) -> str:
    """One entry the way the service's loguru sink shows it: time | LEVEL | ip message."""
    received = float(entry.get("_received", time.time()))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(received))
    millis = int((received % 1) * 1000)
    level = str(entry.get("level", "")).upper()
    return f"{stamp}.{millis:03d} | {level} | {entry.get('_client', '?')} {entry.get('message', '')}"


def _print_entry(entry: dict[str, Any]) -> None:
    with _print_lock:
        print(format_entry(entry), flush=True)


def serve_forever(
    host: str = "127.0.0.1",
    port: int = 8083,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> None:
    """Run the stand-in in the foreground until Ctrl-C or SIGTERM, printing every entry.

    With a token or username/password, clients must authenticate (nobody is
    exempt); without, every client is token-exempt, like 127.0.0.1 usually is.
    """
    svc = DevService(host, port, token=token, username=username, password=password,
                     exempt=not (token or username))
    svc.on_entry = _print_entry
    try:
        svc.start()
    except OSError as err:
        raise SystemExit(f"dev-service: cannot listen on {host}:{port}: {err.strerror or err}") from None
    if svc.require_auth:
        # Never echo the secrets themselves.
        how = []
        if token:
            how.append("a Bearer token (--token)")
        if username:
            how.append(f"a token from POST {TOKEN_PATH} (user {username!r})")
        auth = "required: " + " or ".join(how)
    else:
        auth = "none (every client is token-exempt)"
    print(f"WeFastAPI dev service on {svc.url}  log API: POST {LOG_PATH}  auth: {auth}", flush=True)
    print("Press Ctrl-C to stop.", flush=True)

    done = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: done.set())
    try:
        while not done.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        svc.stop()
        print(f"dev service stopped ({len(svc.entries)} entries received)", file=sys.stderr, flush=True)

