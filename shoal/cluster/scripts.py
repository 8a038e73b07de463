"""The cluster's shell scripts and config files, shipped as package data in shoal/cluster/files/.

They are real files a sysadmin can read, check with shellcheck and reuse: the init scripts that are
PID 1 of the controller, the nodes and the storage host until they exec supervisord or sshd
(``ctl-init.sh``, ``node-init.sh``, ``storage-init.sh``, all sourcing ``net-up.sh``), Slurm's
Prolog/Epilog, the controller's supervisord config (supervisord substitutes ``%(ENV_X)s`` itself)
and the start-order helper it uses. They take their parameters from the environment, so one file
serves every node; ``install`` copies one into a cluster's state directory at `up`, so a running
cluster keeps the files it booted with whatever happens to the installed shoal.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

NET_UP = "net-up.sh"
NODE_INIT = "node-init.sh"
CONTROLLER_INIT = "ctl-init.sh"
STORAGE_INIT = "storage-init.sh"
PROLOG = "prolog.sh"
EPILOG = "epilog.sh"
CONTROLLER_SUPERVISORD_CONF = "ctl-supervisord.conf"
WAIT_THEN_EXEC = "wait_then_exec.py"
SHELL_SCRIPTS = (NET_UP, NODE_INIT, CONTROLLER_INIT, STORAGE_INIT, PROLOG, EPILOG)


def text(name: str) -> str:
    """The content of shipped file NAME."""
    return resources.files("shoal.cluster").joinpath("files", name).read_text()


def install(name: str, dest: Path, mode: int = 0o644) -> Path:
    """Copy shipped file NAME to dest (root-owned, mode) and return dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text(name))
    os.chmod(dest, mode)
    os.chown(dest, 0, 0)
    return dest
