#!/bin/sh
# Slurm Epilog: undo what the Prolog and the job's staging left on this node (mounts, files).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
agent=/etc/slurm/shoal-nodeagent.py
[ -f "$agent" ] || exit 0
exec /usr/bin/python3 "$agent" epilog
