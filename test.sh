#!/usr/bin/env bash
# Run the whole test suite (sets up .venv from requirements-test.lock on first use; installs Debian's chromium for the browser
# tests and libturbojpeg0 for the DICOM fixture's writer when they are missing and this user may run apt-get). Extra
# arguments go to pytest: `./test.sh -m "not slow"` is the fast lane (about a minute on 2 cores: one short training
# shared by its tests, no servers or browsers). Both run on two pytest-xdist workers (pyproject.toml, tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh --test
# Debian packages the tests need: chromium (the browser tests) and libturbojpeg0 (wsidicomizer, which
# scripts/make_dicom_fixture.py and its test use to write the DICOM fixture).
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
.venv/bin/python -c 'import turbojpeg; turbojpeg.TurboJPEG()' 2>/dev/null || missing+=(libturbojpeg0)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} for the tests ..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "error: the tests need Debian's ${missing[*]} (apt-get install ${missing[*]}): chromium at /usr/bin/chromium for the browser tests, libturbojpeg0 for wsidicomizer" >&2
    exit 1
  fi
fi
# Compiled modules are kept (in the __pycache__ folders git ignores), also where the environment says not to write them:
# the suite starts a hundred Python processes that import the same modules, and pytest keeps its rewritten test files
# the same way. Without them, the fast lane took 72 s instead of 62 s here.
unset PYTHONDONTWRITEBYTECODE
exec .venv/bin/python -m pytest "$@"
