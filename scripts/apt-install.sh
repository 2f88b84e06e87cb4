# Sourced by the installers under dashboards/ and loadtests/ after scripts/apt-prelude.sh
# (POSIX sh): install the Debian package $PACKAGE without letting it start a service.
# Usage: PACKAGE="haproxy"; . scripts/apt-install.sh   (needs say() and SUDO set first)
#
# A package's maintainer scripts would start its service (Prometheus on :9090, HAProxy).
# The tests start their own on free loopback ports, so keep the package from starting one:
# a policy-rc.d that refuses service starts, removed again afterwards (only if we created
# it).
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    say "temporarily installing $POLICY so the package does not start a service"
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 755 "$POLICY"
    CREATED_POLICY=1
fi
cleanup() {
    if [ "$CREATED_POLICY" -eq 1 ]; then
        $SUDO rm -f "$POLICY"
    fi
}
trap cleanup EXIT INT TERM

say "running: apt-get update"
$SUDO apt-get update -q
say "running: apt-get install -y --no-install-recommends $PACKAGE"
$SUDO apt-get install -y -q --no-install-recommends "$PACKAGE"
