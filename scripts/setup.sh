#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the pinned requirements. Usage: scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
requirements=requirements.txt
[ "${1:-}" = "dev" ] && requirements=requirements-dev.txt
# pip skips what is already installed at the pinned version, so this is quick after the first run
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
# Our own bytecode, as pip writes it for installed packages: where PYTHONDONTWRITEBYTECODE is
# set nothing else writes it, and every process would compile the package again (~70 ms).
.venv/bin/python -m compileall -q downloader
