"""The daemon process: `exec-supervisor start` runs run() in the foreground.

    core.py        Daemon (extensions, take-over, reconcile, shutdown) and run() (lock, signals, loop thread)
    reload.py      reload: all or nothing, rolling; a mixin of Daemon
    readconfig.py  the config file validated in a short-lived child (pydantic never enters the daemon)
    statedir.py    state_dir lock and modes, log_dir; DaemonError
"""

from ..lazytls import import_without_ssl

import_without_ssl("asyncio")  # before asyncio is imported below: the daemon loads ssl only for https (lazytls.py)

from .core import HANDLED_SIGNALS, Daemon, Shape, default_extensions, run, scale_override_note
from .statedir import DaemonError, StateLock

__all__ = ["run", "Daemon", "DaemonError", "StateLock", "Shape", "HANDLED_SIGNALS", "default_extensions",
           "scale_override_note"]
