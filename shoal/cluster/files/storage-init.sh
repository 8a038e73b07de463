#!/bin/sh
# PID 1 of the storage host (storage = "sshfs") until it execs supervisord (shoal/cluster/storage.py).
# Runs on the host's root filesystem in its own mount namespace: the export tree below is
# built here, so the host sees none of these mounts. Environment: SHOAL_NET_UP, SHOAL_IP,
# SHOAL_TBF, SHOAL_EXPORT (chroot of sshd), SHOAL_PFS, SHOAL_STORE, SHOAL_SSHD_CONFIG,
# SHOAL_STORAGE_SUPERVISORD, SHOAL_AUTHORIZED_KEYS, SHOAL_KEYS_DIR, SHOAL_KEY_USERS,
# SHOAL_PASSWD, SHOAL_GROUP.
set -eu
# shellcheck source-path=SCRIPTDIR source=net-up.sh
. "$SHOAL_NET_UP"
hostname storage
mount -t proc proc /proc
# This mount namespace began as a copy of the host's, with every cluster's /run/netns/* mount:
# held here, they keep those network namespaces (and their veths) alive after their cluster's
# `down` (ip netns del only unmounts on the host). Drop the copies (found by bench_updown.py).
umount -R -l /run/netns 2>/dev/null || true
mount -t tmpfs -o size=16m,mode=0755 tmpfs /run
mkdir -p /run/sshd
# The cluster's users by name (uid 1000 is `shoal` here, whatever the host calls it): sshd logs
# each user's SFTP session in as that user, so what it creates is that user's (storage.py).
mount --bind "$SHOAL_PASSWD" /etc/passwd
mount --bind "$SHOAL_GROUP" /etc/group
# One authorized-keys file per user, root-owned and readable: sshd reads it with the user's uid.
mkdir -m 0755 "$SHOAL_KEYS_DIR"
for u in $SHOAL_KEY_USERS; do
    install -m 0644 -o root -g root "$SHOAL_AUTHORIZED_KEYS" "$SHOAL_KEYS_DIR/$u"
done
# sshd's ChrootDirectory must be root-owned and not writable by others all the way down,
# which the 1777 pfs directory is not: chroot into a small root-owned tmpfs holding it.
E="$SHOAL_EXPORT"
mount -t tmpfs -o size=1m,mode=0755 tmpfs "$E"
mkdir "$E/pfs"
mount --bind "$SHOAL_PFS" "$E/pfs"
mount --bind "$SHOAL_STORE" "$E/pfs/store"
# The image store (and the node agent under store/.shoal) is the admin's: served read-only, so no
# client, root on a node included, can replace an image or the agent root runs.
mount -o remount,bind,ro "$E/pfs/store"
# supervisord (no control socket) runs sshd and the OCI registries; it keeps them up
exec /usr/bin/supervisord -n -c "$SHOAL_STORAGE_SUPERVISORD"
