"""A cluster's secrets: made per cluster at `up`, placed into hosts at start, never in an image.

The munge key (shared by every munged of the cluster), the ssh host key every host presents, the
cluster's ssh client key (root on every host and the user `shoal` log in with it), and the password
slurmdbd uses for MariaDB. Keys are files under the cluster's ``secrets/`` directory (root only);
a node's copy is placed into its fresh upper layer at every start (shoal.cluster.node).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from shoal.cluster.state import ClusterDir
from shoal.cluster.topology import Addressing
from shoal.fsutil import write_file
from shoal.runner import run

SHOAL_UID = 1000  # the cluster user `shoal` on every host
SHOAL_USER = "shoal"
HOST_KEY = "ssh_host_ed25519_key"
# Three client keys, one per trust level (docs/SECURITY.md): root's (admin ssh to every host),
# the user `shoal`'s (in its home, which every job of the user can read), and the one the
# controller and nodes mount /pfs with from the storage host (read by their init scripts before
# pivot_root, never placed where anything of the cluster can read it).
CLIENT_KEY = "id_ed25519"
USER_KEY = "user_id_ed25519"
STORAGE_KEY = "storage_id_ed25519"
# The cluster's ssh client may only talk to hosts whose key it knows.
SSH_CONFIG = "Host *\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n"


@dataclass(frozen=True)
class ClusterSecrets:
    munge_key: bytes
    client_key: bytes  # private key of the cluster's ssh client
    client_pub: str  # its authorized_keys line
    user_key: bytes  # private key of the user `shoal` (its own, not root's)
    user_pub: str
    known_hosts: str  # every host of the cluster presents the one host key
    db_password: str  # slurmdbd's MariaDB account
    ssh_config: str = SSH_CONFIG


def create(cd: ClusterDir, name: str, index: int) -> ClusterSecrets:
    """Make the cluster's keys (ssh keys kept under cd.secrets; the rest returned)."""
    cd.secrets.mkdir(parents=True, exist_ok=True)
    os.chmod(cd.secrets, 0o700)
    for key in (HOST_KEY, CLIENT_KEY, USER_KEY, STORAGE_KEY):
        if not (cd.secrets / key).exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"shoal-{name}",
                 "-f", str(cd.secrets / key)])
    host_pub = (cd.secrets / f"{HOST_KEY}.pub").read_text().split()[:2]
    s = ClusterSecrets(
        munge_key=secrets.token_bytes(1024),
        client_key=(cd.secrets / CLIENT_KEY).read_bytes(),
        client_pub=(cd.secrets / f"{CLIENT_KEY}.pub").read_text(),
        user_key=(cd.secrets / USER_KEY).read_bytes(),
        user_pub=(cd.secrets / f"{USER_KEY}.pub").read_text(),
        known_hosts=f"ctl,node*,{Addressing(index).pattern} {' '.join(host_pub)}\n",
        db_password=secrets.token_hex(12),
    )
    # what every node start places into the node's fresh upper layer
    write_file(cd.secrets / "known_hosts", s.known_hosts)
    write_file(cd.secrets / "ssh_config", s.ssh_config)
    return s


def place_user_home(cd: ClusterDir, s: ClusterSecrets) -> None:
    """The shared home of the user `shoal` (uid 1000 on every host): ssh between hosts."""
    uhome = cd.home / "shoal"
    write_file(uhome / ".ssh" / "authorized_keys", s.user_pub, 0o600, SHOAL_UID, SHOAL_UID)
    write_file(uhome / ".ssh" / "id_ed25519", s.user_key, 0o600, SHOAL_UID, SHOAL_UID)
    write_file(uhome / ".ssh" / "known_hosts", s.known_hosts, 0o644, SHOAL_UID, SHOAL_UID)
    write_file(uhome / ".ssh" / "config", s.ssh_config, 0o644, SHOAL_UID, SHOAL_UID)
    os.chown(uhome, SHOAL_UID, SHOAL_UID)
    os.chown(uhome / ".ssh", SHOAL_UID, SHOAL_UID)
    os.chmod(uhome / ".ssh", 0o700)


def place_node_munge(cd: ClusterDir, s: ClusterSecrets, uid: int, gid: int) -> Path:
    """The munge key directory every node binds at /etc/munge, owned by the image's munge user."""
    nm = cd.secrets / "node-munge"
    nm.mkdir(exist_ok=True)
    os.chown(nm, uid, gid)
    os.chmod(nm, 0o700)
    write_file(nm / "munge.key", s.munge_key, 0o400, uid, gid)
    return nm


def place_in_node(cd: ClusterDir, upper: Path) -> None:
    """Put the node's keys (ssh host key, root's ssh client) into a node's upper layer."""
    sec = cd.secrets
    host_pub = (sec / f"{HOST_KEY}.pub").read_text().split()[:2]
    write_file(upper / "etc/ssh/ssh_host_ed25519_key", (sec / HOST_KEY).read_bytes(), 0o600)
    write_file(upper / "etc/ssh/ssh_host_ed25519_key.pub", " ".join(host_pub) + "\n")
    write_file(upper / "etc/ssh/ssh_known_hosts", (sec / "known_hosts").read_text())
    write_file(upper / "root/.ssh/authorized_keys", (sec / f"{CLIENT_KEY}.pub").read_text(), 0o600)
    write_file(upper / "root/.ssh/id_ed25519", (sec / CLIENT_KEY).read_bytes(), 0o600)
    write_file(upper / "root/.ssh/config", (sec / "ssh_config").read_text())
    os.chmod(upper / "root/.ssh", 0o700)
    os.chmod(upper / "root", 0o700)
