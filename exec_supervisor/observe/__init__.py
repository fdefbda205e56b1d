"""Seeing the farm: Prometheus metrics and the live web status page (the `http:` listener).

    usage.py    CPU time and RSS per instance, read from /proc when someone looks
    metrics.py  the Prometheus exposition, built from the engine's state at scrape time
    views.py    what the page shows: rows, header, events, an instance's description
    stream.py   the page's live feed (Server-Sent Events): snapshot, then changes
    web.py      WebServer, the daemon extension: the TCP listener, its routes and access rules
    static/     the page itself: index.html, app.css, app.js (no build step, no CDN)

An adapter beside control/: it reads the engine's state at request time and reuses the
control API's HTTP server and handlers; it never changes the engine except through
those handlers (the page's actions). prometheus_client is imported at the first scrape.
"""
