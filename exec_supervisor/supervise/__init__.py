"""Supervision: the reconciler, each instance's state machine, their timers, and every OS call.

    engine.py    the reconciler: desired instances (config + runtime overrides) vs actual ones
    instance.py  one executor instance: its process and an explicit state machine
    timers.py    start_seconds deadlines on a slack grid; restart backoff
    osproc.py    the few OS calls the supervisor makes (spawn, signals, reaping, /proc)
    procid.py    a process's exact identity: pid, start ticks, boot id, ET_EXEC_ID
    handover.py  the engine's runtime state as data and back (upgrade); adopting a dead daemon's executors
    pidwatch.py  exits of adopted processes (not our children), through pidfds on the loop

Imports config and events (the Event type); never control, the daemon or the CLI.
"""
