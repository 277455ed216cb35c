#!/usr/bin/env bash
# Run every benchmark section (or those chosen by the options): see benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m benchmarks.run_all "$@"
