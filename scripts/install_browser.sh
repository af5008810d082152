#!/usr/bin/env bash
# Installs what the web app's browser test needs: Debian's chromium (apt) and the Playwright Python driver
# (pip, into .venv). Safe to re-run: each part is skipped when already there.
#
# The browser comes from Debian only. `playwright install` (which downloads its own browser build) is never
# run: the test points Playwright at /usr/bin/chromium (tests/test_app_browser.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PLAYWRIGHT_SPEC=${PERCHEAD_PLAYWRIGHT:-"playwright>=1.45,<2"}

if command -v chromium >/dev/null 2>&1; then
    echo "install_browser: chromium already installed ($(chromium --version 2>/dev/null || echo '?'))"
else
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi

if [ -x .venv/bin/python ] && .venv/bin/python -c "import playwright" >/dev/null 2>&1; then
    echo "install_browser: playwright already in .venv"
else
    [ -x .venv/bin/python ] || { echo "install_browser: no .venv: run scripts/setup.sh first" >&2; exit 1; }
    .venv/bin/python -m pip install -q "$PLAYWRIGHT_SPEC"
fi
