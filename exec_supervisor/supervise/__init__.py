"""Supervision: the reconciler, each instance's state machine, their timers, and every OS call.

    engine.py    the reconciler: desired instances (config + runtime overrides) vs actual ones
    commands.py  the operator's scale, stop, start, restart, signal (a mixin of Engine)
    children.py  spawning, reaping, orphans, shutdown and sweep (a mixin of Engine)
    instance.py  one executor instance: its process and an explicit state machine
    states.py    the instance states and the Host protocol (what an instance asks of its engine)
    stopping.py  an instance's stop: signals, SIGKILL at stop_timeout, leftovers (a mixin of Instance)
    timers.py    start_seconds deadlines on a slack grid; restart backoff
    osproc.py    the OS calls that act: spawn, signals, reaping, the daemon's process settings
    procfs.py    reading /proc: process trees, environments, our own children
    credsocket.py  a datagram socket whose messages carry the sender's pid (the notify and log sockets)
    procid.py    a process's exact identity: pid, start ticks, boot id, ET_EXEC_ID
    handover.py  the engine's runtime state as data and back (upgrade); adopting a dead daemon's executors
    pidwatch.py  exits of adopted processes (not our children), through pidfds on the loop

Imports config and events (the Event type); never control, the daemon or the CLI.
"""
