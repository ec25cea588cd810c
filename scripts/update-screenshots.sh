#!/usr/bin/env bash
# Refresh the README's screenshots: run the browser test (it drives every page on a real server and writes one
# PNG per page under tests/artifacts/screenshots/, ignored by git), then copy those PNGs into assets/screenshots/.
# The test suite alone never changes a tracked file; this command is how the pictures are updated on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
shots=tests/artifacts/screenshots
rm -rf "$shots"
./test.sh tests/e2e/test_browser.py tests/e2e/test_slides_viewer.py -q
mkdir -p assets/screenshots
cp "$shots"/*.png assets/screenshots/
git status --short assets/screenshots
