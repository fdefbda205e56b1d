#!/bin/sh
# Churn instance: lives 0.2-1.0 s, then exits 0 so the supervisor restarts it.
# The duration comes from the pid (no extra process for randomness), so each
# restart differs and the mean is the same for every supervisor.
# sleep runs as a child rather than via exec: this shell stays the instance
# with a stable command line for the observer, and exits when sleep is done.
ms=$(( ($$ * 7919) % 801 + 200 ))
sleep "$(( ms / 1000 )).$(printf '%03d' $(( ms % 1000 )))"
