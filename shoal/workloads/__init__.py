"""The study's workloads: the one registry every side uses (spec validation, job step, tests).

STANDARD LIBRARY ONLY and Python 3.6 compatible: the node agent bundle carries this package.
A workload of kind "node" runs one process per node (the agent's ``workload`` step times it on
the node); kind "mpi" one MPI job over the allocation, one rank per node. In argv, ``{script}`` is
the workload's bundled script copied to the node and ``{t0}`` the launch time (epoch seconds).
catwalk, statwalk and startread are standalone scripts in this package (``python3 catwalk.py [ROOT]``) that
print one JSON line of figures of merit; the others are programs inside their images
(shoal/images/recipes/).
"""

import os
from typing import NamedTuple

from shoal.errors import DistError


class Workload(NamedTuple):
    name: str
    kind: str  # "node" or "mpi"
    argv: "tuple[str, ...]"
    script: "str | None" = None  # file in this package, copied into the container's view
    # "node" workloads only: one process per allocated core of the node (SLURM_CPUS_ON_NODE),
    # all started at once, as an MPI code's ranks start (pynamic: every rank imports everything)
    per_core: bool = False


WORKLOADS: "dict[str, Workload]" = {
    w.name: w
    for w in (
        Workload("catwalk", "node", ("python3", "{script}", "/"), "catwalk.py"),
        Workload("statwalk", "node", ("python3", "{script}", "/"), "statwalk.py"),
        # an application's start-up: a few % of the image's files read (startread.py)
        Workload("startread", "node", ("python3", "{script}", "/"), "startread.py"),
        Workload("pynamic", "node", ("python3", "/opt/pynamic/pynamic_driver.py", "--t0", "{t0}"),
                 per_core=True),
        Workload("mpihello", "mpi", ("mpihello",)),
        Workload("lammps", "mpi", ("lammps-lj",)),
    )
}


def get_workload(name: str) -> Workload:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise DistError(f"unknown workload {name!r}",
                              "known workloads: {}".format(", ".join(sorted(WORKLOADS)))) from None


def script_path(name: str) -> str:
    """The standalone script of workload NAME (a file needing only python3's standard library)."""
    script = get_workload(name).script
    if script is None:
        raise DistError(f"workload {name!r} has no script of its own",
                              "it is a program inside its image")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), script)


def script_names() -> "tuple[str, ...]":
    """Workloads that are scripts of this package (run by any image's python3)."""
    return tuple(name for name, w in sorted(WORKLOADS.items()) if w.script)
