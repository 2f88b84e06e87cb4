#!/bin/sh
# Install headless Chromium (the Debian package `chromium`) when it is missing. `make test`
# runs this first: the report-rendering test opens reports in headless Chromium, takes a
# screenshot and checks it is not blank, and it fails (rather than skips) without it.
#
# Non-interactive, idempotent: exits 0 at once when chromium is already on PATH. Needs root
# (or sudo) and apt-get; elsewhere install Chromium yourself so that `chromium` is on PATH.
set -eu

say() { printf 'install-chromium: %s\n' "$*"; }

for candidate in chromium chromium-browser; do
    if command -v "$candidate" >/dev/null 2>&1; then
        say "already present: $(command -v "$candidate") ($("$candidate" --version 2>/dev/null | head -n 1))"
        exit 0
    fi
done

# apt-get present, root or sudo: the prelude both installers share (sets SUDO).
WHAT="chromium"
. "$(dirname "$0")/../scripts/apt-prelude.sh"
say "running: apt-get update"
$SUDO apt-get update -q
say "running: apt-get install -y --no-install-recommends chromium"
$SUDO apt-get install -y -q --no-install-recommends chromium

if ! command -v chromium >/dev/null 2>&1; then
    say "the chromium package installed but chromium is still not on PATH" >&2
    exit 1
fi
say "installed: $(command -v chromium) ($(chromium --version 2>/dev/null | head -n 1))"
