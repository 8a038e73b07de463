#!/bin/sh
# Slurm Epilog: undo what the Prolog and the job's staging left on this node (mounts, files).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Nothing staged for this job on this node (no job dir, hence no mount under it): done, without
# starting python3 (see the Prolog).
jobdir="/tmp/shoal/$SLURM_JOB_ID"
[ -e "$jobdir" ] || [ -L "$jobdir" ] || exit 0
agent=/etc/slurm/shoal-nodeagent.py
[ -f "$agent" ] || exit 0
exec /usr/bin/python3 "$agent" epilog
