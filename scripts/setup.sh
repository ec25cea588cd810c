#!/usr/bin/env bash
# Shared set-up for ./dashboard.sh and ./test.sh: a virtual environment in .venv with the locked
# requirements and pcam_core installed (editable). Every package comes from a lock file that pins the whole
# environment (scripts/lock.sh writes them from requirements.txt and requirements-test.txt): requirements.lock
# for the dashboard, requirements-test.lock (the same versions plus the tests' packages) with `--test`
# (./test.sh), so a set-up for the tests only adds packages and never moves one under a running dashboard.
# Re-installs only when a lock file or pyproject.toml changed, or the test packages are asked for and not
# installed yet. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

with_test=0
case "${1:-}" in
  "") ;;
  --test) with_test=1 ;;
  *) echo "error: unknown option ${1}; usage: scripts/setup.sh [--test]" >&2; exit 1 ;;
esac

PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.9  # the installer scripts/lock.sh writes the locks with, pinned here
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; install Python 3.11 or newer (Debian/Ubuntu: apt-get install python3 python3-venv)" >&2
  exit 1
fi
"$PYTHON" - <<'PY' || { echo "error: Python 3.11 or newer is needed (the locked numpy needs it)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
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

# The stamp: the hash of the two locks and pyproject.toml, then " test" when the test packages are installed too.
stamp=.venv/.pcam-installed
want=$(cat requirements.lock requirements-test.lock pyproject.toml | sha1sum | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
if [ "${have%% *}" != "$want" ] || { [ "$with_test" = 1 ] && [ "$have" != "$want test" ]; }; then
  lock=requirements.lock
  [ "$with_test" = 1 ] && lock=requirements-test.lock
  echo "installing the locked requirements ($lock; torch is large: a minute or more the first time) ..."
  # With uv (pinned, like every package; kept in .venv/.uv, outside the environment's own packages): it installs the
  # same lock about three times faster than pip. Where uv cannot be installed, pip installs the same lock. Compiled to
  # bytecode at install time, as pip does: without it every import compiles from source where PYTHONDONTWRITEBYTECODE
  # is set (the test suite ran 1.4x slower).
  uv=.venv/.uv/bin/uv
  if [ ! -x "$uv" ] || [ "$("$uv" --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    rm -rf .venv/.uv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --target .venv/.uv "uv==$UV_VERSION" \
      || echo "warning: could not install uv $UV_VERSION; installing with pip (slower)" >&2
  fi
  if [ -x "$uv" ]; then
    "$uv" pip install --quiet --python .venv/bin/python --compile-bytecode -r "$lock"
    "$uv" pip install --quiet --python .venv/bin/python --no-deps -e .
  else
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$lock"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
  fi
  # A package that an older lock named and these do not is removed; anything else off the locks is an error.
  .venv/bin/python scripts/unlocked.py requirements-test.lock --remove
  echo "$want$([ "$with_test" = 1 ] && echo " test")" > "$stamp"
fi
