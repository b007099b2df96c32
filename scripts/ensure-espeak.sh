#!/usr/bin/env sh
# Make sure `espeak-ng` is available for tests/test_speech.py, which synthesizes spoken digits
# offline (multihead.tasks.synth_digits).
#
# Debian ships it as the `espeak-ng` package (/usr/bin/espeak-ng). Installing needs root and the
# package mirror; when either is missing this script says so and exits 0, because the speech
# tests that need it skip themselves cleanly without it and should not fail the build.
set -eu

if command -v espeak-ng >/dev/null 2>&1; then
    echo "espeak-ng: $(espeak-ng --version 2>/dev/null | head -n 1 || echo present)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-espeak: apt-get not found; install espeak-ng yourself (speech tests will skip)" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure-espeak: not root and no passwordless sudo; skipping install" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# `update` first: a fresh container has no package lists, and a stale one may 404.
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends espeak-ng; then
    echo "espeak-ng: $(espeak-ng --version 2>/dev/null | head -n 1 || echo installed)"
else
    echo "ensure-espeak: apt-get install espeak-ng failed (speech tests will skip)" >&2
fi
exit 0
