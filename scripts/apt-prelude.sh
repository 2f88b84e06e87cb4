# Sourced by the installers under dashboards/ and loadtests/ (POSIX sh): check that
# apt-get is there and that we can run it as root, then set SUDO for the caller.
# Usage: WHAT="promtool"; . scripts/apt-prelude.sh   (needs say() defined first)

if ! command -v apt-get >/dev/null 2>&1; then
    say "$WHAT is missing and apt-get is not available: install it by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        say "$WHAT is missing; run this script as root (or install sudo)" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
