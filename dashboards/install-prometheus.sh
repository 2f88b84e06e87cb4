#!/bin/sh
# Install Prometheus (and promtool, which Debian ships in the same package) when promtool
# is missing. `make test` runs this first: the observability tests need a real promtool and
# a real prometheus binary, and fail (rather than skip) without them.
#
# Non-interactive, idempotent: exits 0 at once when promtool is already on PATH. Needs root
# (or sudo) and apt-get; on other systems install Prometheus yourself so that `promtool` and
# `prometheus` are on PATH (https://prometheus.io/download/).
set -eu

say() { printf 'install-prometheus: %s\n' "$*"; }

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    say "promtool already present: $(command -v promtool) ($(promtool --version 2>&1 | head -n 1))"
    exit 0
fi

# apt-get present, root or sudo: the prelude both installers share (sets SUDO).
WHAT="promtool"
. "$(dirname "$0")/../scripts/apt-prelude.sh"

PACKAGE="prometheus"
. "$(dirname "$0")/../scripts/apt-install.sh"

if ! command -v promtool >/dev/null 2>&1; then
    say "the prometheus package installed but promtool is still not on PATH" >&2
    exit 1
fi
say "installed: $(command -v promtool) ($(promtool --version 2>&1 | head -n 1))"
say "installed: $(command -v prometheus)"
