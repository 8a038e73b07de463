#!/bin/sh
# Slurm Epilog: undo what the Prolog and the job's staging left on this node (mounts, files).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
case "${SLURM_JOB_ID:-}" in ''|*[!0-9]*) exit 0 ;; esac
jobdir="/tmp/shoal/$SLURM_JOB_ID"
mnt="/run/shoal/jobs/$SLURM_JOB_ID"
# Nothing mounted for the job and its area left empty: done without starting python3 (see the
# Prolog). rmdir neither follows a symlink nor removes a non-empty directory: anything else (the
# user's files, a FUSE mount, a symlink in its place) goes to the agent, which sweeps as the
# job's user.
if [ ! -e "$mnt" ] && { rmdir -- "$jobdir" 2>/dev/null || [ ! -e "$jobdir" ] && [ ! -L "$jobdir" ]; }; then
    exit 0
fi
agent=/etc/slurm/shoal-nodeagent.py
[ -f "$agent" ] || exit 0
exec /usr/bin/python3 "$agent" epilog
