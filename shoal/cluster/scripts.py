"""Shell scripts that become PID 1 of the controller and of each node before they exec supervisord.

They run with host binaries inside freshly unshared namespaces (net joined by nsenter; mount, uts,
pid, ipc new), set up the network end, the mounts and the hostname, then exec the service manager.
Parameters come as environment variables so one script file serves every node.
"""

from __future__ import annotations

# The namespace end of a host's veth: address and shaping. Idempotent, because the netns outlives
# the container in it (a rolling upgrade restarts a node in the same netns).
NET_UP = r"""ip link set lo up
ip addr replace "$SHOAL_IP/16" dev eth0  # Addressing.prefix_len (shoal/cluster/topology.py)
ip link set eth0 up
if [ -n "$SHOAL_TBF" ]; then
    # shellcheck disable=SC2086
    tc qdisc replace dev eth0 root tbf $SHOAL_TBF
fi
"""

NODE_INIT = r"""#!/bin/sh
# PID 1 of a layer1 node container until it execs supervisord (shoal/cluster/scripts.py).
set -eu
R="$SHOAL_ROOT"
""" + NET_UP + r"""hostname "$SHOAL_HOST"
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
mount --bind "$SHOAL_ETC_SLURM" "$R/etc/slurm"
mount -o remount,bind,ro "$R/etc/slurm"
mount --bind "$SHOAL_ETC_MUNGE" "$R/etc/munge"
cd "$R"
pivot_root . .oldroot
cd /
umount -l /.oldroot
exec /usr/bin/supervisord -n -c /etc/supervisor/supervisord.conf
"""

CONTROLLER_INIT = r"""#!/bin/sh
# PID 1 of the controller (login node) until it execs supervisord (shoal/cluster/scripts.py).
# The controller keeps the host's root filesystem; only cluster-specific paths are bound over it.
set -eu
""" + NET_UP + r"""hostname ctl
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
"""

PROLOG = r"""#!/bin/sh
# Slurm Prolog (runs as root on every node of a job at allocation: PrologFlags=Alloc).
# It is shoal's privileged hook: steps of image distribution methods that need root (kernel
# loop mounts) are done here by the node agent, from a request the job's owner left on /pfs.
# A real site installs the same two lines in its own Prolog/Epilog.
# slurmd runs it with an almost empty environment: losetup and mount live in sbin.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Most jobs leave no request: answer them from the shell. A python3 start per node and job
# (~50 ms of CPU) made `srun -N64 hostname` take 10 s instead of 2.6 s on 2 cores. Only existence
# is tested here; the agent opens the request with O_NOFOLLOW and checks its owner.
req="/pfs/store/.shoal/requests/$SLURM_JOB_ID.json"
[ -e "$req" ] || [ -L "$req" ] || exit 0
agent=/etc/slurm/shoal-nodeagent.py
[ -f "$agent" ] || exit 0
exec /usr/bin/python3 "$agent" prolog
"""

EPILOG = r"""#!/bin/sh
# Slurm Epilog: undo what the Prolog and the job's staging left on this node (mounts, files).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Nothing staged for this job on this node (no job dir, hence no mount under it): done, without
# starting python3 (see the Prolog).
jobdir="/tmp/shoal/$SLURM_JOB_ID"
[ -e "$jobdir" ] || [ -L "$jobdir" ] || exit 0
agent=/etc/slurm/shoal-nodeagent.py
[ -f "$agent" ] || exit 0
exec /usr/bin/python3 "$agent" epilog
"""


WAIT_THEN_EXEC = r"""#!/usr/bin/python3
# Wait until HOST:PORT accepts connections, then exec the command: supervisord has no
# dependencies between programs, and slurmctld exits when slurmdbd is not up yet.
import os, socket, sys, time
host, port, sep, *cmd = sys.argv[1:]
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
os.execv(cmd[0], cmd)
"""


def controller_supervisord_conf(ctl: str, accounting: bool = True) -> str:
    """Controller services: munged, MariaDB, slurmdbd, slurmctld (started in priority order)."""
    slurmctld_cmd = "/usr/sbin/slurmctld -D -f /etc/slurm/slurm.conf"
    if accounting:
        slurmctld_cmd = f"/usr/bin/python3 {ctl}/wait-then-exec.py 127.0.0.1 6819 -- " + slurmctld_cmd
    common = "autostart=true\nautorestart=true\nstopwaitsecs=20\nredirect_stderr=true\n"
    db_common = common.replace("autostart=true", f"autostart={'true' if accounting else 'false'}")
    return f"""; Generated by shoal: the controller's services under supervisord.
[unix_http_server]
file=/run/supervisor.sock
chmod=0700

[supervisord]
nodaemon=true
logfile={ctl}/log/supervisord.log
logfile_maxbytes=10MB
pidfile=/run/supervisord.pid
childlogdir={ctl}/log

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix:///run/supervisor.sock

[program:munged]
command=/usr/sbin/munged -F --key-file={ctl}/munge/munge.key --log-file={ctl}/munge/log/munged.log
    --pid-file=/run/munge/munged.pid --seed-file={ctl}/munge/lib/munged.seed
user=munge
priority=10
startsecs=1
startretries=20
stdout_logfile={ctl}/log/munged.out
{common}
[program:mariadb]
command=/usr/sbin/mariadbd --no-defaults --datadir={ctl}/mysql --socket=/run/mysqld/mysqld.sock
    --bind-address=127.0.0.1 --port=3306 --user=mysql --init-file={ctl}/mysql-init.sql
    --skip-log-bin --innodb-buffer-pool-size=32M --skip-name-resolve
    --log-error={ctl}/log/mariadb.err --pid-file=/run/mysqld/mysqld.pid
priority=20
startsecs=2
startretries=10
stdout_logfile={ctl}/log/mariadb.out
{db_common}
[program:slurmdbd]
command=/usr/bin/python3 {ctl}/wait-then-exec.py 127.0.0.1 3306 -- /usr/sbin/slurmdbd -D
priority=30
startsecs=2
startretries=100
stdout_logfile={ctl}/log/slurmdbd.out
{db_common}
[program:slurmctld]
command={slurmctld_cmd}
priority=40
startsecs=2
startretries=100
stdout_logfile={ctl}/log/slurmctld.out
{common}"""
