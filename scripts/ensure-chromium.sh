#!/usr/bin/env sh
# Headless Chromium (/usr/bin/chromium) for tests/test_viz_browser.py.
exec sh "$(dirname "$0")/ensure-debian-package.sh" chromium chromium "the browser test"
