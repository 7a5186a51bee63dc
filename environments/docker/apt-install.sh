#!/bin/sh
# apt-install.sh DIR PACKAGE... -- install Debian packages inside an image build.
#
# Air-gapped builds (`barbican-harness images build --air-gapped`, or whenever the base
# image cannot be pulled) put every .deb the packages need into DIR, downloaded on the
# host from the machine's Debian mirror for exactly this base: the build then needs no
# network at all (it runs with network_mode=none). Otherwise DIR is empty and the
# packages come from the base image's own apt sources.
set -eu
dir=$1
shift
export DEBIAN_FRONTEND=noninteractive
# Never start a service from a maintainer script inside a build.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
fi
if ls "$dir"/*.deb > /dev/null 2>&1; then
    apt-get install -y -q --no-install-recommends "$dir"/*.deb
else
    apt-get update -q
    apt-get install -y -q --no-install-recommends "$@"
    rm -rf /var/lib/apt/lists/*
fi
apt-get clean
rm -rf "$dir"
