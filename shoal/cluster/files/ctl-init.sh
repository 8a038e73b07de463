#!/bin/sh
# PID 1 of the controller (login node) until it execs supervisord.
# Started by shoal (shoal/cluster/controller.py) in fresh mount/uts/pid/ipc namespaces joined to
# the controller's network namespace. The controller keeps the host's root filesystem; only
# cluster-specific paths are bound over it. Environment as for node-init.sh, plus SHOAL_CTL (the
# controller's state directory: supervisord.conf, munge key, MariaDB data, /etc files, root's ssh),
# SHOAL_CLUSTERS (every cluster's state directory) and SHOAL_CACHE (build caches).
#
# The login node's isolation (docs/SECURITY.md): users of the cluster log in here, so it gets its
# own /tmp, /var/tmp and /dev/shm, a read-only /etc (the host's, with the cluster's passwd, group
# and hosts on top), no view of other clusters' state, of root's home or of the build caches, and
# the image store read-only. The rest of the host's tree (/usr, the checkout a command starts in)
# stays visible, so `shoal cluster exec` can run in the caller's working directory.
set -eu
# shellcheck source-path=SCRIPTDIR source=net-up.sh
. "$SHOAL_NET_UP"
hostname ctl
mount -t proc proc /proc
# This mount namespace began as a copy of the host's, with every cluster's /run/netns/* mount:
# held here, they keep those network namespaces (and their veths) alive after their cluster's
# `down` (ip netns del only unmounts on the host). Drop the copies (found by bench_updown.py).
umount -R -l /run/netns 2>/dev/null || true
mount -t tmpfs -o size=64m,mode=0755 tmpfs /run
mkdir -p /run/munge /run/mysqld /run/shoal
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld
mount --bind "$SHOAL_HOME" /home
if [ -n "${SHOAL_SSHFS_MOUNT:-}" ]; then
    /bin/sh "$SHOAL_SSHFS_MOUNT" /pfs  # storage = "sshfs" (shoal/cluster/storage.py)
else
    mount --bind "$SHOAL_PFS" /pfs
    mount --bind "$SHOAL_STORE" /pfs/store
    mount -o remount,bind,ro /pfs/store
fi
# /etc: read-only overlay, the cluster's files over the host's (a bind of single files would be
# lost when the host replaces /etc/passwd by rename, as useradd does)
mount -t overlay overlay -o "lowerdir=$SHOAL_CTL/etc:/etc" /etc
mount --bind "$SHOAL_ETC_SLURM" /etc/slurm
mount --bind "$SHOAL_ETC_SHOAL" /etc/shoal  # this cluster's site configuration (store = /pfs/store)
# what shoal runs from, kept aside before the hiding below (SHOAL_KEEP: space-separated paths)
i=0
for p in $SHOAL_KEEP; do
    if [ -d "$p" ]; then
        mkdir -p "/run/shoal/keep-$i"
        mount --bind "$p" "/run/shoal/keep-$i"
    fi
    i=$((i + 1))
done
# private scratch
for d in /tmp /var/tmp /dev/shm; do
    mount -t tmpfs -o size=256m,mode=1777,nosuid,nodev tmpfs "$d"
done
# root's home: only the cluster's ssh keys
mount -t tmpfs -o size=1m,mode=0700 tmpfs /root
mkdir -m 0700 /root/.ssh
mount --bind "$SHOAL_CTL/root-ssh" /root/.ssh
# put back, read-only, what shoal itself runs from when it lives in a place hidden above
# (a pyenv Python under /root, a checkout and venv under /tmp): `shoal` on the login node
# (cluster = "existing", `cluster exec -- .venv/bin/shoal`) must run
i=0
for p in $SHOAL_KEEP; do
    if mountpoint -q "/run/shoal/keep-$i" 2>/dev/null; then
        mkdir -p "$p"
        mount --move "/run/shoal/keep-$i" "$p"
        mount -o remount,bind,ro "$p"
        rmdir "/run/shoal/keep-$i"
    fi
    i=$((i + 1))
done
# hide every cluster's state but this controller's own directory, and the build caches
mkdir -p /run/shoal/keep
mount --bind "$SHOAL_CTL" /run/shoal/keep
mount -t tmpfs -o size=1m,mode=0755 tmpfs "$SHOAL_CLUSTERS"
mkdir -p "$SHOAL_CTL"
mount --move /run/shoal/keep "$SHOAL_CTL"
rmdir /run/shoal/keep
if [ -d "$SHOAL_CACHE" ]; then
    mount -t tmpfs -o size=1m,mode=0755 tmpfs "$SHOAL_CACHE"
fi
exec /usr/bin/supervisord -n -c "$SHOAL_CTL/supervisord.conf"
