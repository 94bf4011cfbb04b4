#!/usr/bin/env bash
# Install everything the test suite needs and run it (README's test command; .ci/run calls this).
#  - Python: the project with its test extras (pytest, ruff, playwright's Python package).
#  - Debian's chromium for the browser test (Playwright drives /usr/bin/chromium; it never downloads one).
#  - Debian's PostgreSQL server for the storage tests on PostgreSQL (each test run starts a throwaway one).
#  - Debian's nodejs and npm, the AI SDK clients pinned in tests/js (`npm ci`) for tests/test_ai_sdk.py, and
#    the useChat example page (examples/ai_sdk_chat: `npm ci`, then bundled with esbuild) for the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."

MISSING=""
[ -x /usr/bin/chromium ] || MISSING="$MISSING chromium"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || MISSING="$MISSING postgresql"
command -v node >/dev/null 2>&1 || MISSING="$MISSING nodejs"
command -v npm >/dev/null 2>&1 || MISSING="$MISSING npm"
if [ -n "$MISSING" ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $MISSING >/dev/null; } \
    || echo "warning: could not install$MISSING; the tests that need it will fail or be skipped" >&2
fi

python3 -m pip install --quiet -e ".[test]"
npm ci --prefix tests/js --no-audit --no-fund --silent
npm ci --prefix examples/ai_sdk_chat --no-audit --no-fund --silent
npm run build --prefix examples/ai_sdk_chat --silent
ruff check .
ruff format --check .
python3 -m pytest -q -p no:cacheprovider --durations=40 "$@"
