#!/usr/bin/env bash
# Regenerate the lock files from the direct pins, after a change to requirements.txt or requirements-test.txt:
#   requirements-test.lock  every package ./test.sh installs (requirements.txt + requirements-test.txt), each pinned
#   requirements.lock       every package ./dashboard.sh installs (requirements.txt), at the test lock's versions
# scripts/setup.sh installs only from these (pip install -r ...lock), so nothing floats between two set-ups and
# ./test.sh never changes a version under a running ./dashboard.sh. Both are universal (markers for Linux, macOS,
# Windows and every Python from 3.11 up); versions already in a lock are kept unless a pin asks otherwise
# (`scripts/lock.sh --upgrade` moves every transitive package to its newest release). Needs `uv`: found on PATH,
# else installed once into a throwaway environment under ${TMPDIR:-/tmp}.
set -euo pipefail
cd "$(dirname "$0")/.."

upgrade=()
case "${1:-}" in
  "") ;;
  --upgrade) upgrade=(--upgrade) ;;
  *) echo "error: unknown option ${1}; usage: scripts/lock.sh [--upgrade]" >&2; exit 1 ;;
esac

UV=$(command -v uv || true)
if [ -z "$UV" ]; then
  tools="${TMPDIR:-/tmp}/pcam-lock-tools"
  [ -x "$tools/bin/uv" ] || { python3 -m venv "$tools" && "$tools/bin/python" -m pip install --quiet uv; }
  UV="$tools/bin/uv"
fi

# The oldest Python the pins support (numpy 2.4 needs 3.11); the locks hold for it and every newer one.
common=(--universal --python-version 3.11 --quiet --custom-compile-command scripts/lock.sh)
"$UV" pip compile "${common[@]}" "${upgrade[@]}" requirements.txt requirements-test.txt -o requirements-test.lock
"$UV" pip compile "${common[@]}" requirements.txt -c requirements-test.lock -o requirements.lock
echo "wrote requirements-test.lock ($(grep -c '==' requirements-test.lock) pins) and requirements.lock ($(grep -c '==' requirements.lock) pins)"
