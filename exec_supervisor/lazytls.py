"""ssl on first use: OpenSSL costs a process about 6 MiB resident, and most farms never speak TLS.

asyncio, http.client and urllib.request each `import ssl` (when they can) as they are imported.
The daemon imports them through import_without_ssl(), which holds ssl back for that moment: they
then work without TLS until something needs it (an https:// service host or probe), which calls
load_ssl(): ssl is imported and handed to asyncio's modules, as if it had been there all along.
http.client defines HTTPSConnection only when ssl was there; https_connection() makes the same
connection either way. Nothing of ours imports ssl at module level: this module is the one way in.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType
from typing import Any

# The modules that bind `ssl` (or None) when imported, and what else they derive from it then.
_ASYNCIO_MODULES = ("asyncio.base_events", "asyncio.selector_events", "asyncio.sslproto")


# Held while ssl is held back: another thread's `import ssl` (load_ssl) waits instead of failing.
_holding_back = threading.Lock()


def import_without_ssl(*names: str) -> None:
    """Import these modules (asyncio, http.client, urllib.request) with ssl held back: nothing, if ssl is loaded."""
    with _holding_back:
        if "ssl" in sys.modules:
            return
        sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` raise ImportError
        try:
            for name in names:
                importlib.import_module(name)
        finally:
            if sys.modules.get("ssl", 0) is None:
                del sys.modules["ssl"]


def load_ssl() -> ModuleType:
    """The ssl module, also given to asyncio's modules that were imported without it."""
    with _holding_back:
        import ssl

    for name in _ASYNCIO_MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ssl", None) is None:
            module.ssl = ssl  # type: ignore[attr-defined]
            if name == "asyncio.sslproto" and not hasattr(module, "SSLAgainErrors"):
                module.SSLAgainErrors = (ssl.SSLWantReadError, ssl.SSLSyscallError)  # type: ignore[attr-defined]
    return ssl


def https_connection(host: str, port: int | None, timeout: float, context: Any) -> Any:
    """An HTTPS connection of http.client (whether or not it was imported with ssl)."""
    import http.client

    load_ssl()
    if hasattr(http.client, "HTTPSConnection"):
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    return _https_class()(host, port, timeout=timeout, context=context)


_https_made: list[type] = []


def _https_class() -> type:
    """http.client.HTTPSConnection's connect, for an http.client imported while ssl was held back."""
    if _https_made:
        return _https_made[0]
    import http.client

    class HTTPSConnection(http.client.HTTPConnection):
        default_port = http.client.HTTPS_PORT

        def __init__(self, host: str, port: int | None = None, *, timeout: float, context: Any) -> None:
            super().__init__(host, port, timeout=timeout)
            self._context = context

        def connect(self) -> None:
            super().connect()  # also the CONNECT of a proxy tunnel, when set_tunnel was called
            server_hostname = self._tunnel_host or self.host  # type: ignore[attr-defined]
            self.sock = self._context.wrap_socket(self.sock, server_hostname=server_hostname)

    _https_made.append(HTTPSConnection)
    return HTTPSConnection
