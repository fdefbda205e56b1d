"""`python -m exec_supervisor.cli`."""

from . import main

main(prog_name="exec-supervisor")
