#!/usr/bin/env bash
# Set up and start the app on SQLite + a local folder (data/). Open http://localhost:8501
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streamlit run app.py "$@"
