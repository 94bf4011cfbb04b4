#!/usr/bin/env bash
# Install the project with its test extras and run the whole test suite (README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet -e ".[test]"
ruff check .
python3 -m pytest -q -p no:cacheprovider "$@"
