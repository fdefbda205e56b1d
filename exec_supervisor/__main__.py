"""`python -m exec_supervisor ...`: the same as the `exec-supervisor` console script.

An in-place upgrade re-executes the daemon as `sys.executable -m exec_supervisor`: the
interpreter that runs it now, with whatever version of the package is installed for it.
"""

from .cli import main

main(prog_name="exec-supervisor")
