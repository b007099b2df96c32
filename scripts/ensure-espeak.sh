#!/usr/bin/env sh
# espeak-ng for tests/test_speech.py, which synthesizes spoken digits offline
# (multihead.tasks.synth_digits).
exec sh "$(dirname "$0")/ensure-debian-package.sh" espeak-ng espeak-ng "the speech tests that need it"
