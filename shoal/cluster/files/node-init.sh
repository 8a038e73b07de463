#!/bin/sh
# PID 1 of a layer1 node container until it execs supervisord.
# Started by shoal (shoal/cluster/node.py) inside a fresh mount/uts/pid/ipc namespace joined to
# the node's network namespace; runs with the host's binaries, mounts the node's root (overlay of
# the layer1 image and a per-node upper layer), pivots into it and execs the service manager.
# Parameters come as environment variables so one script file serves every node:
#   SHOAL_NET_UP     net-up.sh to source       SHOAL_IP, SHOAL_TBF   address and shaping
#   SHOAL_HOST       node name (hostname)      SHOAL_ROOT            where the root is assembled
#   SHOAL_LOWER/UPPER/WORK   overlay layers    SHOAL_TMPFS           size of the node's /tmp
#   SHOAL_HOME, SHOAL_PFS, SHOAL_STORE, SHOAL_ETC_SLURM, SHOAL_ETC_SHOAL, SHOAL_ETC_MUNGE   host dirs bound in
#   SHOAL_MUNGE_UID/GID   the image's munge user    SHOAL_SSHFS_MOUNT   (storage = "sshfs") mount script
#   SHOAL_DEVICES_CGROUP  the node's devices cgroup (host path; may be empty: no devices cgroup)
#   SHOAL_BROKER_SOCKET   this node's mount broker socket (host path)
#   SHOAL_CAPS            capabilities node root keeps (setpriv --bounding-set syntax)
#
# Confinement (docs/SECURITY.md): root in the node keeps only SHOAL_CAPS (no CAP_SYS_ADMIN,
# SYS_MODULE, SYS_RAWIO, NET_ADMIN, MKNOD, SYS_PTRACE, ...), sees /proc/sys, /sys and the cgroup
# tree read-only, some /proc files masked, its own devpts, and through its devices cgroup opens no
# block device. Mounts for jobs are made by shoal's mount broker (shoal/cluster/broker.py).
set -eu
R="$SHOAL_ROOT"
# first of all: everything this node will ever run belongs to its devices cgroup
if [ -n "${SHOAL_DEVICES_CGROUP:-}" ]; then
    echo 0 > "$SHOAL_DEVICES_CGROUP/cgroup.procs"
fi
# shellcheck source-path=SCRIPTDIR source=net-up.sh
. "$SHOAL_NET_UP"
hostname "$SHOAL_HOST"
mount -t overlay overlay -o "lowerdir=$SHOAL_LOWER,upperdir=$SHOAL_UPPER,workdir=$SHOAL_WORK" "$R"
mount -t proc proc "$R/proc"
# Host-wide kernel settings read-only (core_pattern, modprobe, ...), host-only files masked.
for p in sys sysrq-trigger irq bus fs; do
    if [ -e "$R/proc/$p" ]; then
        mount --bind "$R/proc/$p" "$R/proc/$p"
        mount -o remount,bind,ro "$R/proc/$p"
    fi
done
for p in kcore keys timer_list sched_debug kallsyms; do
    if [ -f "$R/proc/$p" ]; then mount --bind /dev/null "$R/proc/$p"; fi
done
# A sysfs of its own, read-only: mounted from inside the node's netns it shows the node's
# interfaces (eth0 counters); the cgroup tree slurmd checks for is bound from the host, read-only.
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
mount --rbind /sys/fs/cgroup "$R/sys/fs/cgroup"
mount -o remount,bind,ro "$R/sys/fs/cgroup"
for d in "$R"/sys/fs/cgroup/*; do
    if mountpoint -q "$d"; then mount -o remount,bind,ro "$d"; fi
done
mount --rbind /dev "$R/dev"
# ptys of its own: the host's devpts would let node root reach the host's terminals
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5,nosuid,noexec devpts "$R/dev/pts"
mount --bind "$R/dev/pts/ptmx" "$R/dev/ptmx"
mount -t tmpfs -o size=64m,mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
mount -t tmpfs -o "size=$SHOAL_TMPFS,mode=1777,nosuid,nodev" tmpfs "$R/tmp"
# staging areas: /tmp/shoal/<job> (the job user's, made by the Prolog) in a root-owned parent
mkdir -m 0755 "$R/tmp/shoal"
mount -t tmpfs -o size=64m,mode=0755,nosuid tmpfs "$R/run"
mkdir -p "$R/run/sshd" "$R/run/munge" "$R/run/shoal/jobs"
chmod 0755 "$R/run/shoal" "$R/run/shoal/jobs"
if [ -n "${SHOAL_BROKER_SOCKET:-}" ]; then
    # this node's two sockets of the mount broker: root's (Prolog, Epilog) and job steps'
    : > "$R/run/shoal/broker.sock"
    mount --bind "$SHOAL_BROKER_SOCKET" "$R/run/shoal/broker.sock"
    : > "$R/run/shoal/broker-user.sock"
    mount --bind "${SHOAL_BROKER_SOCKET%.sock}.user.sock" "$R/run/shoal/broker-user.sock"
fi
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
    # the admin's image store and node agent: nobody in a node writes them
    mount --bind "$SHOAL_STORE" "$R/pfs/store"
    mount -o remount,bind,ro "$R/pfs/store"
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
mount --bind "$SHOAL_ETC_SHOAL" "$R/etc/shoal"
mount -o remount,bind,ro "$R/etc/shoal"
mount --bind "$SHOAL_ETC_MUNGE" "$R/etc/munge"
cd "$R"
pivot_root . .oldroot
cd /
umount -l /.oldroot
# The image's lean launcher of supervisord (no pkg_resources: 0.12 CPU-s and 8 MB less per node);
# an older layer1 image (rolling upgrade) has only Debian's.
sv=/usr/bin/supervisord
if [ -x /usr/local/sbin/supervisord ]; then
    sv=/usr/local/sbin/supervisord
fi
# drop every capability not in SHOAL_CAPS from the bounding set: nothing started in this node,
# setuid programs included, can get them back
exec setpriv --bounding-set "-all,${SHOAL_CAPS:?}" --inh-caps "-all" \
    "$sv" -n -c /etc/supervisor/supervisord.conf
