#!/usr/bin/env bash
# Create bench/.venv with the peers (supervisord, circus) and matplotlib.
# Idempotent: a venv that already has the pinned versions is left alone.
# Usage: bash bench/setup_peers.sh [PYTHON]   (default: python3 on PATH)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${1:-python3}"
venv="$here/.venv"
req="$here/requirements-peers.txt"
stamp="$venv/.requirements-peers.txt"
if [[ -x "$venv/bin/python" && -f "$stamp" ]] && cmp -s "$req" "$stamp"; then
    echo "bench/.venv is up to date"
    exit 0
fi
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
"$venv/bin/supervisord" --version >/dev/null
"$venv/bin/circusd" --version >/dev/null
cp "$req" "$stamp"
echo "bench/.venv ready: supervisor $("$venv/bin/supervisord" --version), $("$venv/bin/circusd" --version)"
