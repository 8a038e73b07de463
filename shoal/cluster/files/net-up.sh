# shellcheck shell=sh
# Sourced by the init scripts of the controller, the nodes and the storage host: the namespace
# end of the host's veth, its address and its shaping. Idempotent, because the netns outlives the
# container in it (a rolling upgrade restarts a node in the same netns).
# Environment: SHOAL_IP (address in the cluster's 10.<index>.0.0/16: shoal/cluster/topology.py),
# SHOAL_TBF (tc tbf arguments, may be empty), SHOAL_STORAGE_HTB (the storage host: tc htb class
# arguments of its own bandwidth, instead of the tbf), SHOAL_CGROUP_PROCS (cgroup.procs files of the host's
# own cgroups, shoal/cluster/cgroups.py).

# First of all, move PID 1 (this shell: `echo 0` moves the writer) into the host's own cgroups, so
# everything the host will ever start is accounted and limited per host.
for f in ${SHOAL_CGROUP_PROCS:-}; do
    echo 0 > "$f"
done
ip link set lo up
ip addr replace "$SHOAL_IP/16" dev eth0
ip link set eth0 up
if [ -n "${SHOAL_STORAGE_HTB:-}" ]; then
    # the storage host: its own bandwidth, separate from the per-node links (HTB)
    tc qdisc replace dev eth0 root handle 1: htb default 10
    # shellcheck disable=SC2086 # SHOAL_STORAGE_HTB is a list of tc arguments
    tc class replace dev eth0 parent 1: classid 1:10 htb $SHOAL_STORAGE_HTB
elif [ -n "$SHOAL_TBF" ]; then
    # shellcheck disable=SC2086 # SHOAL_TBF is a list of tc arguments
    tc qdisc replace dev eth0 root tbf $SHOAL_TBF
fi
