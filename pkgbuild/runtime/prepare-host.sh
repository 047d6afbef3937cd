#!/bin/sh
# Prepare a build host for the agent runtime (docs/runtime.md), idempotently:
#  1. a deb-src entry for every Debian `deb` source apt already uses (apt-get source needs it);
#  2. the python-less Debian 11 root that tests/e2e/test_no_python_vm.py copies per test,
#     made by `debootstrap --variant=minbase --include=wget bullseye` from the Debian mirror apt
#     already uses.
# Usage: prepare-host.sh CACHE_DIR
set -eu
CACHE=$1
LIST=/etc/apt/sources.list.d/aliyun-assist-deb-src.sources

debian_mirror() {
    # the first Debian archive URI of apt's own configuration (deb822 or one-line style)
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | grep -o 'https\?://[^ ]*/debian/\?$\|https\?://[^ ]*/debian ' | head -n 1 |
        sed 's# *$##; s#/$##'
}

MIRROR=$(debian_mirror)
[ -n "$MIRROR" ] || { echo "prepare-host: no Debian mirror in apt's sources" >&2; exit 1; }
if [ ! -f "$LIST" ]; then
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    printf 'Types: deb-src\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$MIRROR" "$codename" "$codename" > "$LIST"
    apt-get update -qq
fi

mkdir -p "$CACHE"
if [ ! -f "$CACHE/bullseye-minbase/etc/debian_version" ]; then
    rm -rf "$CACHE/bullseye-minbase.tmp"
    # wget: bootstrap.sh needs curl or wget; neither pulls in python3
    nice -n 10 debootstrap --variant=minbase --include=wget bullseye "$CACHE/bullseye-minbase.tmp" \
        "$MIRROR" >/dev/null
    mv "$CACHE/bullseye-minbase.tmp" "$CACHE/bullseye-minbase"
fi
echo "host ready: deb-src in $LIST, Debian 11 root in $CACHE/bullseye-minbase"
