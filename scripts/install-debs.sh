#!/bin/sh
# Install the Debian packages listed in packaging/debian-packages.txt that are missing.
# Idempotent: does nothing (and needs no network) when everything is installed.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
pkgs=$(grep -v '^#' "$here/packaging/debian-packages.txt" | grep -v '^$')
missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    echo "debian packages: all present"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: missing Debian packages:$missing" >&2
    echo "hint: run 'make setup' as root (apt-get install needs it)" >&2
    exit 1
fi
echo "debian packages: installing$missing"
export DEBIAN_FRONTEND=noninteractive
# Daemons are started by shoal itself, never by the package scripts.
made_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
fi
trap '[ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
