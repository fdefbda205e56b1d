"""The control API: the operator's full-power interface to a running daemon.

    httpserver.py  a small HTTP/1.1 server on asyncio streams (h11 speaks the protocol)
    api.py         the routes and handlers, on the daemon's loop
    client.py      the CLI side: HTTP over the Unix socket, and human renderings

A thin adapter: handlers change the engine's desired state and let it reconcile.
Imports config, events and supervise; nothing below imports control.
"""
