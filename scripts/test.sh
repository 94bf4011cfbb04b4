#!/usr/bin/env bash
# Install everything the test suite needs and run it (README's test command; .ci/run calls this).
#  - Python: the project with its test extras (pytest, ruff, playwright's Python package).
#  - Debian's chromium for the browser test (Playwright drives /usr/bin/chromium; it never downloads one).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; } \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi

python3 -m pip install --quiet -e ".[test]"
ruff check .
ruff format --check .
python3 -m pytest -q -p no:cacheprovider "$@"
