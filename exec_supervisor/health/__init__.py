"""Health: know when an executor is ready, notice when it hangs or bloats.

    notify.py   the farm's one sd_notify datagram socket (SO_PASSCRED) and the message format
    probes.py   exec and HTTP probes: bounded concurrency, spread over `every`, no thread per instance
    memory.py   whole-tree RSS and CPU of every instance, sampled from /proc (or its cgroup)
    service.py  the daemon extension that wires them to the instances

Sits above supervise/ (the instance state machine holds the transitions: supervise/readiness.py)
and below control/ (which shows the figures). Nothing here stops a process itself.
"""

from .service import Health

__all__ = ["Health"]
