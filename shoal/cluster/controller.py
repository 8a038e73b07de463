"""The controller (also the login node): its files, its accounting database, its start.

The controller keeps the host's root filesystem with cluster paths bound over it (ctl-init.sh in
shoal/cluster/files/) and runs munged, MariaDB, slurmdbd and slurmctld under supervisord
(ctl-supervisord.conf). Everything it needs lives in the cluster's ``ctl/`` state directory.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from shoal.cluster import scripts
from shoal.cluster.enter import new_namespaces
from shoal.cluster.secrets import SHOAL_UID, ClusterSecrets
from shoal.cluster.state import ClusterDir, ClusterState
from shoal.errors import ClusterError
from shoal.fsutil import write_file
from shoal.runner import spawn, wait

SLURMDBD = "127.0.0.1:6819"


def with_user(text: str, kind: str) -> str:
    """Host passwd/group as the controller sees it: uid/gid 1000 is the cluster user `shoal`.

    The nodes' image defines shoal:1000; the login node must map 1000 to the same name (Slurm
    and sacct show names), so a host entry with id 1000 under another name is replaced here.
    """
    def ours(ln: str) -> bool:
        f = ln.split(":")
        return f[0] == "shoal" or (len(f) > 2 and f[2] == str(SHOAL_UID))

    keep = [ln for ln in text.splitlines() if ln and not ours(ln)]
    if kind == "passwd":
        keep.append(f"shoal:x:{SHOAL_UID}:{SHOAL_UID}:shoal cluster user:/home/shoal:/bin/bash")
    else:
        keep.append(f"shoal:x:{SHOAL_UID}:")
    return "\n".join(keep) + "\n"


def mysql_init(db_password: str) -> str:
    """MariaDB's --init-file: the accounting database and slurmdbd's account."""
    return (
        "CREATE DATABASE IF NOT EXISTS slurm_acct_db;\n"
        f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{db_password}';\n"
        f"ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{db_password}';\n"
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';\n"
    )


def prepare(cd: ClusterDir, s: ClusterSecrets, hosts: str, accounting: bool) -> None:
    """The controller's files: host munge user's key dir, /etc files, root's ssh, services."""
    ctl = cd.ctl
    hm = pwd.getpwnam("munge")
    mysql = pwd.getpwnam("mysql")
    mdir = ctl / "munge"
    for d in (mdir, mdir / "log", mdir / "lib"):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, hm.pw_uid, hm.pw_gid)
        os.chmod(d, 0o700)
    write_file(mdir / "munge.key", s.munge_key, 0o400, hm.pw_uid, hm.pw_gid)
    write_file(ctl / "etc" / "hosts", hosts)
    write_file(ctl / "etc" / "passwd", with_user(Path("/etc/passwd").read_text(), "passwd"))
    write_file(ctl / "etc" / "group", with_user(Path("/etc/group").read_text(), "group"))
    write_file(ctl / "root-ssh" / "id_ed25519", s.client_key, 0o600)
    write_file(ctl / "root-ssh" / "authorized_keys", s.client_pub, 0o600)
    write_file(ctl / "root-ssh" / "known_hosts", s.known_hosts)
    write_file(ctl / "root-ssh" / "config", s.ssh_config)
    os.chmod(ctl / "root-ssh", 0o700)
    scripts.install(scripts.CONTROLLER_SUPERVISORD_CONF, ctl / "supervisord.conf")
    scripts.install(scripts.WAIT_THEN_EXEC, ctl / scripts.WAIT_THEN_EXEC, 0o755)
    write_file(ctl / "mysql-init.sql", mysql_init(s.db_password) if accounting else "", 0o600,
               mysql.pw_uid, mysql.pw_gid)


def start_install_db(cd: ClusterDir) -> int:
    """Start mariadb-install-db (the slowest step of the controller: seconds) in the background."""
    ctl = cd.ctl
    return spawn(
        ["mariadb-install-db", "--no-defaults", f"--datadir={ctl}/mysql", "--user=mysql",
         "--auth-root-authentication-method=socket", "--skip-test-db"],
        log_path=ctl / "log" / "mariadb-install-db.log",
    )


def wait_install_db(cd: ClusterDir, pid: int) -> None:
    if wait(pid, timeout=120) != 0:
        raise ClusterError(
            "mariadb-install-db failed for the accounting database",
            f"see {cd.ctl}/log/mariadb-install-db.log",
        )


def controller_env(common: dict[str, str], cd: ClusterDir, ip: str, accounting: bool) -> dict[str, str]:
    """ctl-init.sh's environment (and through it, what ctl-supervisord.conf substitutes)."""
    return {
        **common,
        "SHOAL_IP": ip,
        "SHOAL_CTL": str(cd.ctl),
        "SHOAL_ACCOUNTING": "true" if accounting else "false",
        "SHOAL_SLURMCTLD_WAITS_FOR": SLURMDBD if accounting else "none",
    }


def start_controller(cd: ClusterDir, state: ClusterState, env: dict[str, str]) -> int:
    return spawn(
        new_namespaces(state.netns("ctl"), ["/bin/sh", str(cd.root / scripts.CONTROLLER_INIT)]),
        log_path=cd.logs / "ctl.console", env=env,
    )
