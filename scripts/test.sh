#!/usr/bin/env bash
# Run the test suite (one pytest process; extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
"$PY" -m pytest "$@"
