"""The farm as another engine's configuration: one module per target.

    common.py       what every target needs: contiguous id ranges, the command line of run-one,
                    an ExportError (one line, exit 2)
    kubernetes.py   ConfigMap + per type and id range a StatefulSet and its headless Service
    systemd.py      template units et-<name>@.service and a <farm>.target
    supervisord.py  [program:et-<name>] per id range and the [eventlistener:exec-supervisor]

Each reads only config/ (a loaded FarmConfig and the file's own YAML) and returns text; the
commands in cli/export_cmds.py print or write it. Nothing here starts a process. Pods and
units run `exec-supervisor run-one`, so restarts, backoff and events stay ours; supervisord runs
the executors itself, and its event listener (supervisordlistener.py) gives the events back.
"""
