#!/usr/bin/env sh
# Usage: sh scripts/ensure-debian-package.sh PACKAGE COMMAND WHO-NEEDS-IT
#
# Make sure Debian's PACKAGE (which provides COMMAND) is installed, for tests that use it.
# Installing needs root (or passwordless sudo) and the package mirror; when either is missing
# this script says so and exits 0, because the tests that need COMMAND skip themselves cleanly
# without it and should not fail the build.
set -eu
package=$1
command=$2
who=$3

if command -v "$command" >/dev/null 2>&1; then
    echo "$package: $("$command" --version 2>/dev/null | head -n 1 || echo present)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure $package: apt-get not found; install $package yourself ($who will skip)" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure $package: not root and no passwordless sudo; skipping install" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# `update` first: a fresh container has no package lists, and a stale one may 404.
if $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "$package"; then
    echo "$package: $("$command" --version 2>/dev/null | head -n 1 || echo installed)"
else
    echo "ensure $package: apt-get install $package failed ($who will skip)" >&2
fi
exit 0
