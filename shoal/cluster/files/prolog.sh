#!/bin/sh
# Slurm Prolog (runs as root on every node of a job at allocation: PrologFlags=Alloc).
# shoal's privileged hook (docs/SECURITY.md): it gives the job's user its area /tmp/shoal/<job>,
# and when the job's comment asks (`shoal-stage=METHOD:IMAGE`, kept by slurmctld in the job
# record, so only the job's owner or an admin set it), the node agent mounts the image of the
# admin's store read-only at /run/shoal/jobs/<job>/<image>. A real site installs the same lines
# in its own Prolog/Epilog. slurmd runs it with an almost empty environment: losetup and mount
# live in sbin.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
agent=/etc/slurm/shoal-nodeagent.py
case "${SLURM_JOB_COMMENT:-}" in
    *shoal-stage=*) [ -f "$agent" ] && exec /usr/bin/python3 "$agent" prolog ;;
esac
case "${SLURM_JOB_ID:-}" in ''|*[!0-9]*) exit 0 ;; esac
case "${SLURM_JOB_UID:-}" in ''|*[!0-9]*) exit 0 ;; esac
case "${SLURM_JOB_GID:-}" in ''|*[!0-9]*) SLURM_JOB_GID=$SLURM_JOB_UID ;; esac
# Most jobs ask for nothing: their area is made here, without python (a python3 start per node
# and job, ~50 ms of CPU, made `srun -N64 hostname` take 10 s instead of 2.6 s on 2 cores). Only
# when /tmp/shoal is the root-owned 0755 directory node-init.sh made: nothing a user planted can
# be in it, and no user can replace it. Anything else goes to the agent, which moves it aside.
if [ -d /tmp/shoal ] && [ ! -L /tmp/shoal ] && [ "$(stat -c %u.%a /tmp/shoal)" = "0.755" ]; then
    d="/tmp/shoal/$SLURM_JOB_ID"
    rm -rf -- "$d"
    mkdir -m 0700 -- "$d" && chown -- "$SLURM_JOB_UID:$SLURM_JOB_GID" "$d"
    exit 0
fi
[ -f "$agent" ] && exec /usr/bin/python3 "$agent" prolog
exit 0
