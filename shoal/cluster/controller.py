"""The controller (also the login node): its files, its accounting database, its start.

The controller keeps the host's root filesystem with cluster paths bound over it (ctl-init.sh in
shoal/cluster/files/) and runs munged, MariaDB, slurmdbd and slurmctld under supervisord
(ctl-supervisord.conf). Everything it needs lives in the cluster's ``ctl/`` state directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import sys
from pathlib import Path

from shoal import paths
from shoal.cluster import scripts
from shoal.cluster.enter import new_namespaces
from shoal.cluster.secrets import SHOAL_UID, ClusterSecrets
from shoal.cluster.state import ClusterDir, ClusterState
from shoal.errors import ClusterError
from shoal.fsutil import locked, write_file
from shoal.paths import cache_root
from shoal.runner import run, spawn, wait

SLURMDBD = "127.0.0.1:6819"


# places the login node hides (ctl-init.sh gives it private ones)
HIDDEN_ON_LOGIN = ("/root/", "/tmp/", "/var/tmp/", "/dev/shm/")


def kept_paths() -> list[str]:
    """What shoal runs from that the login node would hide: its interpreter (pyenv under /root),
    its venv and its checkout (under /tmp in a CI clone). Outermost paths only, no spaces."""
    cands = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, str(paths.REPO_ROOT))}
    hidden = sorted(p for p in cands if p.startswith(HIDDEN_ON_LOGIN) and " " not in p)
    return [p for p in hidden if not any(p.startswith(q + "/") for q in hidden if q != p)]


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


INSTALL_DB_ARGS = ["--no-defaults", "--user=mysql", "--auth-root-authentication-method=socket",
                   "--skip-test-db"]


def db_template() -> Path:
    """An empty MariaDB data directory made once per MariaDB version and kept in the cache.

    mariadb-install-db bootstraps the system tables with a server run: 4-7 s, and far more while
    hundreds of nodes boot on the same 2 cores. Copying its result (114 MB) takes under a second.
    Nothing cluster-specific is in it: slurmdbd's database and account come from the init file
    at every start (mysql_init).
    """
    version = run(["mariadbd", "--version"], timeout=30).stdout.strip()
    key = hashlib.sha256(json.dumps([version, INSTALL_DB_ARGS]).encode()).hexdigest()[:16]
    root = paths.cache_root() / "mariadb"
    done = root / key
    root.mkdir(parents=True, exist_ok=True)
    with locked(root / ".lock"):
        if not done.is_dir():
            tmp = root / f".{key}.{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                run(["mariadb-install-db", f"--datadir={tmp}", *INSTALL_DB_ARGS], timeout=300,
                    what="creating the MariaDB data directory template")
                os.rename(tmp, done)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return done


def start_install_db(cd: ClusterDir) -> int:
    """Start copying the data directory template into the controller's state (in the background)."""
    template = db_template()
    return spawn(["cp", "-a", "--", str(template), str(cd.ctl / "mysql")],
                 log_path=cd.ctl / "log" / "mariadb-install-db.log")


def wait_install_db(cd: ClusterDir, pid: int) -> None:
    if wait(pid, timeout=120) != 0:
        raise ClusterError(
            "copying the MariaDB data directory for the accounting database failed",
            f"see {cd.ctl}/log/mariadb-install-db.log",
        )


def controller_env(common: dict[str, str], cd: ClusterDir, ip: str, accounting: bool) -> dict[str, str]:
    """ctl-init.sh's environment (and through it, what ctl-supervisord.conf substitutes)."""
    return {
        **common,
        "SHOAL_IP": ip,
        "SHOAL_CTL": str(cd.ctl),
        "SHOAL_CLUSTERS": str(cd.root.parent),
        "SHOAL_CACHE": str(cache_root()),
        "SHOAL_KEEP": " ".join(kept_paths()),
        "SHOAL_ACCOUNTING": "true" if accounting else "false",
        "SHOAL_SLURMCTLD_WAITS_FOR": SLURMDBD if accounting else "none",
    }


def start_controller(cd: ClusterDir, state: ClusterState, env: dict[str, str]) -> int:
    """Start the controller; it inherits the caller's niceness (`up` raises it: manager.py)."""
    return spawn(
        new_namespaces(state.netns("ctl"), ["/bin/sh", str(cd.root / scripts.CONTROLLER_INIT)]),
        log_path=cd.logs / "ctl.console", env=env,
    )
