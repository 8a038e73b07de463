"""The Slurm client: typed jobs and nodes from sbatch/squeue/sacct/scancel/sinfo/scontrol."""

from shoal.slurm.client import (
    AccountingUnavailable,
    Backoff,
    Job,
    JobState,
    Node,
    SlurmClient,
    SlurmVersion,
    poll,
)

__all__ = [
    "AccountingUnavailable",
    "Backoff",
    "Job",
    "JobState",
    "Node",
    "SlurmClient",
    "SlurmVersion",
    "poll",
]
