#!/usr/bin/env bash
# Run the whole test suite (sets up .venv with the test requirements on first use; installs Debian's chromium for the browser
# tests when it is missing and this user may run apt-get). Extra arguments go to pytest: `./test.sh -m "not slow"`
# is the fast lane (about a minute and a half on 2 cores: no training runs, servers or browsers).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --test
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the browser tests ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "error: the browser tests need Debian's chromium at /usr/bin/chromium (apt-get install chromium)" >&2
    exit 1
  fi
fi
exec .venv/bin/python -m pytest "$@"
