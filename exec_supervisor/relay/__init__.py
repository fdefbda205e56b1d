"""The supervisor delivers its executors' own log lines: the log socket and the HTTP relay.

Both hand each line to the event forwarder's executor-line spool (events/execlines.py),
so the lines are durable, ordered, retried and sent with the supervisor's credentials.
Imports events/, supervise/ and control/'s h11 server; nothing imports it but daemon.py.
"""
