# shellcheck shell=sh
# Sourced by the init scripts of the controller, the nodes and the storage host: the namespace
# end of the host's veth, its address and its shaping. Idempotent, because the netns outlives the
# container in it (a rolling upgrade restarts a node in the same netns).
# Environment: SHOAL_IP (address in the cluster's 10.<index>.0.0/16: shoal/cluster/topology.py),
# SHOAL_TBF (tc tbf arguments, may be empty).
ip link set lo up
ip addr replace "$SHOAL_IP/16" dev eth0
ip link set eth0 up
if [ -n "$SHOAL_TBF" ]; then
    # shellcheck disable=SC2086 # SHOAL_TBF is a list of tc arguments
    tc qdisc replace dev eth0 root tbf $SHOAL_TBF
fi
