"""Upper bounds on what a cluster config or a study spec may ask of this machine (one place).

Each bound is quoted in the error that refuses a value beyond it. Node counts follow the scale
goal (256 nodes, stretch 512, on one 2-core / 24 GiB machine); whether a given node count really
fits in memory is decided at `cluster up` by the capacity check from the measured cost per node.
"""

from __future__ import annotations

MAX_NODES = 512
# One study: repetitions per experiment, and experiments x repetitions in all (each run is a
# Slurm job of at least a second or two: 100,000 runs is more than a day of jobs).
MAX_REPETITIONS = 1000
MAX_RUNS = 100_000
# Per-experiment job time limit (Slurm --time); longer is a hang, not a measurement.
MAX_TIMEOUT_S = 24 * 3600.0
MAX_CONCURRENCY = MAX_NODES
# Entries in one matrix list (images, methods, workloads, node counts).
MAX_LIST = MAX_NODES
