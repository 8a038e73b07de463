"""Image distribution: stage a container image on every node of a Slurm allocation, run in it.

    base.py       the Method interface, its registry (@register), node-side helpers (stdlib only)
    methods/      one module per method: untar, sbcast, squashfs-kernel, squashfuse, shared-dir,
                  sbcast-squashfs (stdlib only)
    nodeagent.py  the per-node program: check, stage, verify, cleanup, prolog, epilog (stdlib only)
    driver.py     the submit side: allocation, collective steps (sbcast), srun of the agent,
                  per-node records and tables, cleanup on failure, `shoal run`

shoal/bundle.py packs the node side into one zipapp that plain python3 runs on the nodes.
This file stays free of imports: the bundle ships a copy of the package without the driver.
"""
