#!/bin/sh
# Install HAProxy (the Debian package `haproxy`) when it is missing. `make test` runs this
# first: the cluster tests start a real HAProxy in front of the switch workers, and they fail
# (rather than skip) without it.
#
# Non-interactive, idempotent: exits 0 at once when haproxy is already on PATH. Needs root
# (or sudo) and apt-get; elsewhere install HAProxy (2.4 or later) yourself so that `haproxy`
# is on PATH.
set -eu

say() { printf 'install-haproxy: %s\n' "$*"; }

if command -v haproxy >/dev/null 2>&1; then
    say "already present: $(command -v haproxy) ($(haproxy -v 2>&1 | head -n 1))"
    exit 0
fi

# apt-get present, root or sudo: the prelude the installers share (sets SUDO).
WHAT="haproxy"
. "$(dirname "$0")/../scripts/apt-prelude.sh"

PACKAGE="haproxy"
. "$(dirname "$0")/../scripts/apt-install.sh"

if ! command -v haproxy >/dev/null 2>&1; then
    say "the haproxy package installed but haproxy is still not on PATH" >&2
    exit 1
fi
say "installed: $(command -v haproxy) ($(haproxy -v 2>&1 | head -n 1))"
