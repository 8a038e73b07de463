#!/bin/sh
# PID 1 of the controller (login node) until it execs supervisord.
# Started by shoal (shoal/cluster/controller.py) in fresh mount/uts/pid/ipc namespaces joined to
# the controller's network namespace. The controller keeps the host's root filesystem; only
# cluster-specific paths are bound over it. Environment as for node-init.sh, plus SHOAL_CTL (the
# controller's state directory: supervisord.conf, munge key, MariaDB data, /etc files, root's ssh).
set -eu
# shellcheck source-path=SCRIPTDIR source=net-up.sh
. "$SHOAL_NET_UP"
hostname ctl
mount -t proc proc /proc
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
fi
mount --bind "$SHOAL_ETC_SLURM" /etc/slurm
for f in hosts passwd group; do
    mount --bind "$SHOAL_CTL/etc/$f" "/etc/$f"
done
mount --bind "$SHOAL_CTL/root-ssh" /root/.ssh
exec /usr/bin/supervisord -n -c "$SHOAL_CTL/supervisord.conf"
