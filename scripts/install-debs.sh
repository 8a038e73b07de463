#!/bin/sh
# Install the Debian packages listed in packaging/debian-packages.txt that are missing, the two
# builder scripts of charliecloud-builders without its docker.io/buildah dependencies, and leave
# no service enabled at boot that shoal starts itself.
# Idempotent: installs nothing (and needs no network) when everything is there.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
pkgs=$(grep -v '^#' "$here/packaging/debian-packages.txt" | grep -v '^$')

# Daemons shoal runs itself, inside its clusters: never started or enabled by the packages.
SHOAL_SERVICES="slurmctld slurmd slurmdbd munge mariadb supervisor docker-registry"
# What an older `make setup` (the charliecloud metapackage) pulled in as dependencies.
ENGINE_SERVICES="docker.service docker.socket containerd.service"

missing=""
for p in $pkgs; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
need_builders=""
for f in ch-image ch-convert; do
    [ -x "/usr/bin/$f" ] || [ -x "/usr/local/bin/$f" ] || need_builders=1
done
# ch-image runs the ch-run that sits beside it ("missing dependency: /usr/local/bin/ch-run")
if [ -x /usr/local/bin/ch-image ] && [ ! -e /usr/local/bin/ch-run ]; then
    need_builders=1
fi

if [ -z "$missing" ] && [ -z "$need_builders" ]; then
    echo "debian packages: all present"
elif [ "$(id -u)" != 0 ]; then
    echo "error: missing Debian packages:$missing${need_builders:+ (and ch-image/ch-convert)}" >&2
    echo "hint: run 'make setup' as root (apt-get install needs it)" >&2
    exit 1
else
    export DEBIAN_FRONTEND=noninteractive
    # Daemons are started by shoal itself, never by the package scripts.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    tmp=$(mktemp -d)
    trap '[ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d; rm -rf "$tmp"' EXIT
    apt-get update -q
    if [ -n "$missing" ]; then
        echo "debian packages: installing$missing"
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $missing
    fi
    if [ -n "$need_builders" ]; then
        # ch-image (builds) and ch-convert (exports) are scripts on charliecloud-common's library;
        # the package that ships them hard-depends on a container engine shoal never uses.
        echo "charliecloud-builders: ch-image and ch-convert into /usr/local (without docker.io, buildah)"
        (cd "$tmp" && apt-get download -q charliecloud-builders)
        dpkg-deb -x "$tmp"/charliecloud-builders_*.deb "$tmp/x"
        install -m 0755 "$tmp/x/usr/bin/ch-image" "$tmp/x/usr/bin/ch-convert" /usr/local/bin/
        # ch-image calls $(dirname $0)/ch-run: the runtime package's, beside it
        [ -e /usr/local/bin/ch-run ] || ln -s /usr/bin/ch-run /usr/local/bin/ch-run
        # they find their library at $(dirname $0)/../lib/charliecloud
        mkdir -p /usr/local/lib
        [ -e /usr/local/lib/charliecloud ] || ln -s /usr/lib/charliecloud /usr/local/lib/charliecloud
    fi
fi

# Slurm's mpi/pmix plugin dlopens the unversioned libpmix.so (srun --mpi=pmix on the login node,
# which runs on the host's /usr). Only libpmix-dev ships that name, and it pulls in autotools and
# a dozen -dev packages: the one symlink it would add is made here instead (the layer1 image does
# the same, shoal/images/recipes/layer1/Dockerfile).
pmix=/usr/lib/x86_64-linux-gnu/pmix2/lib
if [ "$(id -u)" = 0 ] && [ -e "$pmix/libpmix.so.2" ] && [ ! -e "$pmix/libpmix.so" ]; then
    echo "libpmix: $pmix/libpmix.so -> libpmix.so.2 (what libpmix-dev would add)"
    ln -s libpmix.so.2 "$pmix/libpmix.so"
fi

# Nothing enabled at boot that the user did not ask for (also repairs an older setup).
if [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null 2>&1; then
    for s in $SHOAL_SERVICES; do
        if [ "$(systemctl is-enabled "$s" 2>/dev/null || true)" = enabled ]; then
            echo "services: disabling $s at boot (shoal starts it itself, in its clusters)"
            systemctl disable --quiet --no-reload "$s" 2>/dev/null || true
        fi
    done
    # docker.io/containerd only ever came in as the charliecloud metapackage's dependencies
    if dpkg-query -W -f='${Status}' docker.io 2>/dev/null | grep -q "install ok installed" \
        && apt-mark showauto docker.io 2>/dev/null | grep -qx docker.io; then
        for s in $ENGINE_SERVICES; do
            if [ "$(systemctl is-enabled "$s" 2>/dev/null || true)" = enabled ]; then
                echo "services: disabling $s at boot (pulled in by charliecloud-builders, unused)"
                systemctl disable --quiet --no-reload "$s" 2>/dev/null || true
            fi
        done
    fi
fi
