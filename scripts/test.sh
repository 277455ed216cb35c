#!/usr/bin/env bash
# Set up and run the whole test suite: lint, types, and pytest (unit, PostgreSQL, S3, UI, browser).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev

# Debian's Chromium for the Playwright tests (never a downloaded browser).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# PostgreSQL on 127.0.0.1:5432: start the local cluster if it is installed but stopped.
if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/pytest -q -p no:cacheprovider "$@"
