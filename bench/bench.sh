#!/usr/bin/env bash
# The one command: install the peers into bench/.venv, then run the benchmark.
#   bash bench/bench.sh --quick            # a few minutes, N=100
#   bash bench/bench.sh --full             # N = 100, 500, 1000 (about 45 minutes)
# Any run.py option passes through (--only, --supervisors, --out, ...).
# exec-supervisor itself runs from the current interpreter's install (pip install -e .).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
bash "$here/setup_peers.sh" "$py"
exec "$py" "$here/run.py" "$@"
