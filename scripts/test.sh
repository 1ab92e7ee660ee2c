#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (fast and slow tests, real data, headless browser).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-browser
python -m pytest -q -rs "$@"
