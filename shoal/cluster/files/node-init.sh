#!/bin/sh
# PID 1 of a layer1 node container until it execs supervisord.
# Started by shoal (shoal/cluster/node.py) inside a fresh mount/uts/pid/ipc namespace joined to
# the node's network namespace; runs with the host's binaries, mounts the node's root (overlay of
# the layer1 image and a per-node upper layer), pivots into it and execs the service manager.
# Parameters come as environment variables so one script file serves every node:
#   SHOAL_NET_UP     net-up.sh to source       SHOAL_IP, SHOAL_TBF   address and shaping
#   SHOAL_HOST       node name (hostname)      SHOAL_ROOT            where the root is assembled
#   SHOAL_LOWER/UPPER/WORK   overlay layers    SHOAL_TMPFS           size of the node's /tmp
#   SHOAL_HOME, SHOAL_PFS, SHOAL_STORE, SHOAL_ETC_SLURM, SHOAL_ETC_MUNGE   host dirs bound in
#   SHOAL_MUNGE_UID/GID   the image's munge user    SHOAL_SSHFS_MOUNT   (storage = "sshfs") mount script
set -eu
R="$SHOAL_ROOT"
# shellcheck source-path=SCRIPTDIR source=net-up.sh
. "$SHOAL_NET_UP"
hostname "$SHOAL_HOST"
mount -t overlay overlay -o "lowerdir=$SHOAL_LOWER,upperdir=$SHOAL_UPPER,workdir=$SHOAL_WORK" "$R"
mount -t proc proc "$R/proc"
# A sysfs of its own: mounted from inside the node's netns it shows the node's interfaces (eth0
# counters); the cgroup tree slurmd checks for is bound from the host.
mount -t sysfs sysfs "$R/sys"
mount --rbind /sys/fs/cgroup "$R/sys/fs/cgroup"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o size=64m,mode=1777 tmpfs "$R/dev/shm"
mount -t tmpfs -o "size=$SHOAL_TMPFS,mode=1777" tmpfs "$R/tmp"
mount -t tmpfs -o size=64m,mode=0755 tmpfs "$R/run"
mkdir -p "$R/run/sshd" "$R/run/munge" "$R/run/shoal"
# Unprivileged FUSE (squashfuse, ch-run image.sqfs) needs /dev/fuse 0666, as on a stock node; a
# node-own device inode bound over the host's keeps the host's /dev/fuse as it is.
if [ -c /dev/fuse ]; then
    mknod -m 0666 "$R/run/shoal/fuse" c 10 229
    mount --bind "$R/run/shoal/fuse" "$R/dev/fuse"
fi
chown "$SHOAL_MUNGE_UID:$SHOAL_MUNGE_GID" "$R/run/munge"
mount --bind "$SHOAL_HOME" "$R/home"
if [ -n "${SHOAL_SSHFS_MOUNT:-}" ]; then
    # storage = "sshfs": /pfs (store included) from the storage host, before pivot_root while the
    # host's sshfs is reachable; the daemon stays in this node's namespaces (shoal/cluster/storage.py)
    /bin/sh "$SHOAL_SSHFS_MOUNT" "$R/pfs"
else
    mount --bind "$SHOAL_PFS" "$R/pfs"
    mount --bind "$SHOAL_STORE" "$R/pfs/store"
fi
if [ -n "${SHOAL_STORAGE_LINK:-}" ] && [ -d "$SHOAL_STORAGE_LINK" ]; then
    # the storage host's link counters as the host sees them, read-only: jobs count the bytes
    # storage served where they flow (shoal/staging/accounting.py)
    mkdir -p "$R/run/shoal/storage-link"
    mount --bind "$SHOAL_STORAGE_LINK" "$R/run/shoal/storage-link"
    mount -o remount,bind,ro "$R/run/shoal/storage-link"
fi
mount --bind "$SHOAL_ETC_SLURM" "$R/etc/slurm"
mount -o remount,bind,ro "$R/etc/slurm"
mount --bind "$SHOAL_ETC_MUNGE" "$R/etc/munge"
cd "$R"
pivot_root . .oldroot
cd /
umount -l /.oldroot
exec /usr/bin/supervisord -n -c /etc/supervisor/supervisord.conf
