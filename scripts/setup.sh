#!/usr/bin/env bash
# Shared set-up for ./dashboard.sh and ./test.sh: a virtual environment in .venv with the pinned
# requirements and pcam_core installed (editable); `--test` (./test.sh) adds requirements-test.txt.
# Re-installs only when requirements.txt, requirements-test.txt or pyproject.toml changed, or the
# test requirements are asked for and not installed yet. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

with_test=0
case "${1:-}" in
  "") ;;
  --test) with_test=1 ;;
  *) echo "error: unknown option ${1}; usage: scripts/setup.sh [--test]" >&2; exit 1 ;;
esac

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; install Python 3.10 or newer (Debian/Ubuntu: apt-get install python3 python3-venv)" >&2
  exit 1
fi
"$PYTHON" - <<'PY' || { echo "error: Python 3.10 or newer is needed" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY

if [ ! -x .venv/bin/python ]; then
  echo "setting up the virtual environment in .venv ..."
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      "$PYTHON" -m venv .venv
    else
      echo "error: cannot create a virtual environment; install the venv module (Debian/Ubuntu: sudo apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi

# The stamp: the hash of the three files, then " test" when the test requirements are installed too.
stamp=.venv/.pcam-installed
want=$(cat requirements.txt requirements-test.txt pyproject.toml | sha1sum | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
if [ "${have%% *}" != "$want" ] || { [ "$with_test" = 1 ] && [ "$have" != "$want test" ]; }; then
  echo "installing the pinned requirements$([ "$with_test" = 1 ] && echo " and the test requirements") (torch is large: a few minutes the first time) ..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  if [ "$with_test" = 1 ]; then
    .venv/bin/python -m pip install --quiet -r requirements.txt -r requirements-test.txt
  else
    .venv/bin/python -m pip install --quiet -r requirements.txt
  fi
  .venv/bin/python -m pip install --quiet --no-deps -e .
  echo "$want$([ "$with_test" = 1 ] && echo " test")" > "$stamp"
fi
