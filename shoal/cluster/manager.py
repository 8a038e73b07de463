"""Life cycle of a virtual cluster: up, down, status, exec (the cluster subsystem's API).

Data flow of `up`: validate config -> check root/packages/memory/name -> layer1 image (cached) ->
write state (so a crash can be cleaned) -> secrets, configs -> bridge + netns + veth -> controller
(supervisord: munged, mariadb, slurmdbd, slurmctld) and all nodes (supervisord: rsyslogd, munged,
slurmd, sshd) started in parallel -> wait until Slurm shows every node idle.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from shoal.cluster import netns
from shoal.cluster.config import NODE_MEMORY_BUDGET_MB, ClusterConfig
from shoal.cluster.scripts import (
    CONTROLLER_INIT,
    EPILOG,
    NODE_INIT,
    PROLOG,
    WAIT_THEN_EXEC,
    controller_supervisord_conf,
)
from shoal.cluster.slurmconf import (
    Addressing,
    render_hosts,
    render_slurm_conf,
    render_slurmdbd_conf,
)
from shoal.cluster.state import ClusterDir, ClusterState, free_index, list_states
from shoal.errors import ClusterError, DependencyError, PrivilegeError, ShoalError
from shoal.paths import store_root
from shoal.runner import reap, run, spawn, wait

REQUIRED_PROGRAMS = [
    "ip", "tc", "nsenter", "unshare", "mount", "pivot_root", "supervisord", "slurmctld", "slurmdbd",
    "munged", "mariadbd", "mariadb-install-db", "ssh-keygen", "sinfo", "srun",
]
SHOAL_UID = 1000
BOOT_TIMEOUT = 180.0


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise PrivilegeError(
            "the virtual cluster needs root (namespaces, bridges, mounts)",
            "run it as root, e.g. `sudo .venv/bin/shoal cluster up ...`",
        )
    missing = [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None]
    if missing:
        raise DependencyError(
            f"missing programs: {' '.join(missing)}",
            "run `make setup` to install shoal's Debian packages",
        )


def _mem_available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def check_capacity(cfg: ClusterConfig) -> None:
    need = cfg.nodes * NODE_MEMORY_BUDGET_MB + 512
    have = _mem_available_mb()
    if need > have * 0.8:
        most = max(0, int((have * 0.8 - 512) // NODE_MEMORY_BUDGET_MB))
        raise ClusterError(
            f"{cfg.nodes} nodes need about {need} MB but only {have} MB of memory is available",
            f"use --nodes {most} or fewer on this machine",
        )


# ----------------------------------------------------------------------------------------- up


@dataclass(frozen=True)
class UpResult:
    state: ClusterState
    boot_seconds: float
    layer1_size: int


def up(cfg: ClusterConfig, progress: bool = True) -> UpResult:
    check_prerequisites()
    check_capacity(cfg)
    cd = ClusterDir(cfg.name)
    if cd.exists() and cd.load().phase == "down":
        shutil.rmtree(cd.root)  # state kept by `down --keep-state`; a new `up` replaces it
    if cd.exists():
        raise ClusterError(
            f"a cluster named {cfg.name!r} already exists",
            f"pick another --name, or remove it with `shoal cluster down --name {cfg.name}`",
        )
    if cd.root.exists():
        shutil.rmtree(cd.root)  # debris of a run killed before its state was written
    from shoal.images.layer1 import ensure_layer1

    image = ensure_layer1()
    t0 = time.monotonic()
    taken = {s.index for s in list_states()}
    state = ClusterState(
        name=cfg.name,
        index=free_index(taken),
        nodes=cfg.node_names(),
        network={**cfg.profile.as_dict(), "storage": cfg.storage},
        storage=cfg.storage,
        config={k: v for k, v in asdict(cfg).items() if k != "source"},
        layer1_image=str(image.path),
        layer1_hash=image.hash,
        created=time.time(),
    )
    if Path(f"/sys/class/net/{state.bridge}").exists():
        raise ClusterError(
            f"bridge {state.bridge} already exists on this host",
            f"a crashed cluster may have left it: `shoal cluster down --name {cfg.name}`",
        )
    cd.save(state)  # from here on, `down` can remove everything
    try:
        _boot(cfg, cd, state, Path(image.path))
        _wait_idle(cd, state, BOOT_TIMEOUT)
        if cfg.state_service:
            from shoal.cluster import statebackend

            statebackend.start_service(cfg.name)
    except BaseException:
        with contextlib.suppress(ShoalError, OSError):
            down(cfg.name)
        raise
    state.phase = "up"
    state.boot_seconds = time.monotonic() - t0
    cd.save(state)
    return UpResult(state, state.boot_seconds, image.size_bytes)


@contextlib.contextmanager
def booted(cfg: ClusterConfig) -> Iterator[UpResult]:
    """A cluster for the length of a with-block (tests, benchmarks, the demo).

    A cluster of the same name left by a killed earlier run is removed first; the teardown always
    runs, is not cut short by a second Ctrl-C or a SIGTERM, and raises ClusterError naming
    anything it could not remove.
    """
    if ClusterDir(cfg.name).exists():
        down(cfg.name)
    res = up(cfg)
    try:
        yield res
    finally:
        main = threading.current_thread() is threading.main_thread()
        saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            left = down(cfg.name)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        if left:
            raise ClusterError(f"taking cluster {cfg.name!r} down left: {', '.join(left)}",
                               f"run `shoal cluster down --name {cfg.name}` again")


def _image_ids(image: Path, user: str) -> tuple[int, int]:
    for line in (image / "etc/passwd").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == user:
            return int(parts[2]), int(parts[3])
    raise ClusterError(f"the layer1 image has no user {user!r}", "rebuild it: `shoal image build layer1`")


def _write(path: Path, text: str | bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    os.chmod(path, mode)
    os.chown(path, uid, gid)


def _boot(cfg: ClusterConfig, cd: ClusterDir, state: ClusterState, image: Path) -> None:
    addr = Addressing(state.index)
    ctl = cd.ctl
    for d in (cd.etc_slurm, cd.home, cd.pfs / "store", ctl / "log", ctl / "spool", cd.secrets, cd.logs):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(cd.pfs, 0o1777)
    # Mount points the controller binds over on the host's root filesystem.
    for p in ("/pfs", "/etc/slurm", "/root/.ssh"):
        Path(p).mkdir(parents=True, exist_ok=True)
    store = store_root()
    store.mkdir(parents=True, exist_ok=True)

    # -- secrets: made per cluster, placed into nodes at start, never in the image
    munge_key = secrets.token_bytes(1024)
    ssh_dir = cd.secrets
    for key in ("ssh_host_ed25519_key", "id_ed25519"):
        if not (ssh_dir / key).exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"shoal-{cfg.name}",
                 "-f", str(ssh_dir / key)])
    host_pub = (ssh_dir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    client_key = (ssh_dir / "id_ed25519").read_bytes()
    client_pub = (ssh_dir / "id_ed25519.pub").read_text()
    known_hosts = f"ctl,node*,10.250.{state.index}.* {' '.join(host_pub)}\n"
    ssh_config = "Host *\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n"

    # -- Slurm configuration, shared read-only by every node at /etc/slurm
    db_password = secrets.token_hex(12)
    hosts = render_hosts(cfg, addr)
    _write(cd.etc_slurm / "slurm.conf", render_slurm_conf(cfg, addr, str(ctl)))
    _write(cd.etc_slurm / "slurmdbd.conf", render_slurmdbd_conf(str(ctl), db_password), 0o600)
    _write(cd.etc_slurm / "prolog.sh", PROLOG, 0o755)
    _write(cd.etc_slurm / "epilog.sh", EPILOG, 0o755)
    if cfg.state_service:
        from shoal.cluster import statebackend

        # Where each node's supervisord event listener sends its events (shoal/state).
        _write(cd.etc_slurm / "shoal-state.conf", statebackend.listener_conf(state))
    # The node agent bundle (stdlib-only zipapp) for the Prolog/Epilog privileged hook.
    from shoal.staging.bundle import write_bundle

    write_bundle(cd.etc_slurm / "shoal-nodeagent.py")

    # -- the unprivileged user's shared home (uid 1000 on every host of the cluster)
    uhome = cd.home / "shoal"
    _write(uhome / ".ssh" / "authorized_keys", client_pub, 0o600, SHOAL_UID, SHOAL_UID)
    _write(uhome / ".ssh" / "id_ed25519", client_key, 0o600, SHOAL_UID, SHOAL_UID)
    _write(uhome / ".ssh" / "known_hosts", known_hosts, 0o644, SHOAL_UID, SHOAL_UID)
    _write(uhome / ".ssh" / "config", ssh_config, 0o644, SHOAL_UID, SHOAL_UID)
    os.chown(uhome, SHOAL_UID, SHOAL_UID)
    os.chown(uhome / ".ssh", SHOAL_UID, SHOAL_UID)
    os.chmod(uhome / ".ssh", 0o700)

    # -- controller: host munge user, MariaDB data dir, bound /etc files
    hm = pwd.getpwnam("munge")
    mysql = pwd.getpwnam("mysql")
    mdir = ctl / "munge"
    for d in (mdir, mdir / "log", mdir / "lib"):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, hm.pw_uid, hm.pw_gid)
        os.chmod(d, 0o700)
    _write(mdir / "munge.key", munge_key, 0o400, hm.pw_uid, hm.pw_gid)
    _write(ctl / "etc" / "hosts", hosts)
    _write(ctl / "etc" / "passwd", _with_user(Path("/etc/passwd").read_text(), "passwd"))
    _write(ctl / "etc" / "group", _with_user(Path("/etc/group").read_text(), "group"))
    _write(ctl / "root-ssh" / "id_ed25519", client_key, 0o600)
    _write(ctl / "root-ssh" / "authorized_keys", client_pub, 0o600)
    _write(ctl / "root-ssh" / "known_hosts", known_hosts)
    _write(ctl / "root-ssh" / "config", ssh_config)
    os.chmod(ctl / "root-ssh", 0o700)
    _write(ctl / "supervisord.conf", controller_supervisord_conf(str(ctl), cfg.accounting))
    _write(ctl / "wait-then-exec.py", WAIT_THEN_EXEC, 0o755)
    _write(
        ctl / "mysql-init.sql",
        "CREATE DATABASE IF NOT EXISTS slurm_acct_db;\n"
        f"CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '{db_password}';\n"
        f"ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{db_password}';\n"
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';\n",
        0o600, mysql.pw_uid, mysql.pw_gid,
    )
    if cfg.accounting:
        # mariadb-install-db is the slowest step of the controller (seconds): run it while the
        # nodes are being prepared.
        install_db = spawn(
            ["mariadb-install-db", "--no-defaults", f"--datadir={ctl}/mysql", "--user=mysql",
             "--auth-root-authentication-method=socket", "--skip-test-db"],
            log_path=ctl / "log" / "mariadb-install-db.log",
        )

    # -- per-node munge key dir owned by the image's munge user, and per-node upper dirs
    muid, mgid = _image_ids(image, "munge")
    nm = cd.secrets / "node-munge"
    nm.mkdir(exist_ok=True)
    os.chown(nm, muid, mgid)
    os.chmod(nm, 0o700)
    _write(nm / "munge.key", munge_key, 0o400, muid, mgid)
    _write(cd.secrets / "known_hosts", known_hosts)
    _write(cd.secrets / "ssh_config", ssh_config)
    for name in state.nodes:
        _prepare_node(cd, name)

    # -- network: one bridge, a netns + veth per host
    hosts_ = state.netns_hosts()
    netns.create_network(
        state.bridge, [(state.netns(h), state.host_veth(h)) for h in hosts_], cfg.profile
    )
    tbf = " ".join(netns.tbf_args(cfg.profile))
    (cd.root / "node-init.sh").write_text(NODE_INIT)
    (cd.root / "ctl-init.sh").write_text(CONTROLLER_INIT)

    common = {
        "SHOAL_HOME": str(cd.home),
        "SHOAL_PFS": str(cd.pfs),
        "SHOAL_STORE": str(store),
        "SHOAL_ETC_SLURM": str(cd.etc_slurm),
        "SHOAL_TBF": tbf,
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    # -- storage = "sshfs": a storage host serves /pfs over the cluster network; controller and
    # nodes mount it with sshfs instead of binding SHOAL_PFS (shoal/cluster/storage.py).
    if cfg.storage == "sshfs":
        from shoal.cluster import storage

        storage_env, mount_script = storage.prepare(cd, addr, store, tbf)
        state.storage_pid = spawn(
            _in_new_ns(state.netns("storage"), ["/bin/sh", str(storage.StorageFiles.of(cd).init_script)]),
            log_path=cd.logs / "storage.console", env=storage_env,
        )
        cd.save(state)
        storage.wait_listening(state.storage_pid, cd.logs / "storage.console")
        common["SHOAL_SSHFS_MOUNT"] = str(mount_script)
    # Nodes first: they do not need the controller to start, and slurmctld pings every
    # configured node when it comes up, so the order costs nothing.
    for i, name in enumerate(state.nodes, 1):
        nd = cd.node(name)
        env = {
            **common,
            "SHOAL_ROOT": str(nd / "root"),
            "SHOAL_LOWER": str(image),
            "SHOAL_UPPER": str(nd / "upper"),
            "SHOAL_WORK": str(nd / "work"),
            "SHOAL_IP": addr.node(i),
            "SHOAL_HOST": name,
            "SHOAL_TMPFS": cfg.tmpfs_size,
            "SHOAL_MUNGE_UID": str(muid),
            "SHOAL_MUNGE_GID": str(mgid),
            "SHOAL_ETC_MUNGE": str(nm),
        }
        (nd / "env.json").write_text(json.dumps(env, indent=1, sort_keys=True))
        state.node_pids[name] = _start_node(cd, state, name)
        state.node_images[name] = state.layer1_hash
    if cfg.accounting:
        if wait(install_db, timeout=120) != 0:
            raise ClusterError(
                "mariadb-install-db failed for the accounting database",
                f"see {ctl}/log/mariadb-install-db.log",
            )
    else:
        _write(ctl / "mysql-init.sql", "", 0o600)
    ctl_env = {**common, "SHOAL_IP": addr.controller, "SHOAL_CTL": str(ctl)}
    state.controller_pid = spawn(
        _in_new_ns(state.netns("ctl"), ["/bin/sh", str(cd.root / "ctl-init.sh")]),
        log_path=cd.logs / "ctl.console", env=ctl_env,
    )
    cd.save(state)


def _prepare_node(cd: ClusterDir, name: str) -> None:
    """A fresh per-node upper layer holding only the node's placed files (keys, hosts)."""
    nd = cd.node(name)
    for sub in ("upper", "work"):
        if (nd / sub).exists():
            shutil.rmtree(nd / sub)
    up_ = nd / "upper"
    for sub in ("work", "root", "upper/.oldroot", "upper/pfs", "upper/etc/slurm", "upper/var/log/slurm"):
        (nd / sub).mkdir(parents=True, exist_ok=True)
    sec = cd.secrets
    host_pub = (sec / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    _write(up_ / "etc/ssh/ssh_host_ed25519_key", (sec / "ssh_host_ed25519_key").read_bytes(), 0o600)
    _write(up_ / "etc/ssh/ssh_host_ed25519_key.pub", " ".join(host_pub) + "\n")
    _write(up_ / "etc/ssh/ssh_known_hosts", (sec / "known_hosts").read_text())
    _write(up_ / "etc/hosts", (cd.ctl / "etc" / "hosts").read_text())
    _write(up_ / "etc/hostname", name + "\n")
    # fusermount3 and mount(8) read /etc/mtab, which image builds may leave out.
    (up_ / "etc/mtab").symlink_to("../proc/self/mounts")
    _write(up_ / "root/.ssh/authorized_keys", (sec / "id_ed25519.pub").read_text(), 0o600)
    _write(up_ / "root/.ssh/id_ed25519", (sec / "id_ed25519").read_bytes(), 0o600)
    _write(up_ / "root/.ssh/config", (sec / "ssh_config").read_text())
    os.chmod(up_ / "root/.ssh", 0o700)
    os.chmod(up_ / "root", 0o700)


def _start_node(cd: ClusterDir, state: ClusterState, name: str, lower: Path | None = None) -> int:
    """Start node `name`'s container from its saved environment (optionally on a new image)."""
    env = json.loads((cd.node(name) / "env.json").read_text())
    if lower is not None:
        env["SHOAL_LOWER"] = str(lower)
        (cd.node(name) / "env.json").write_text(json.dumps(env, indent=1, sort_keys=True))
    return spawn(
        _in_new_ns(state.netns(name), ["/bin/sh", str(cd.root / "node-init.sh")]),
        log_path=cd.logs / f"{name}.console", env=env,
    )


def _with_user(text: str, kind: str) -> str:
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


def _in_new_ns(ns: str, argv: list[str]) -> list[str]:
    # nsenter (not `ip netns exec`, which remounts /sys and hides cgroups from slurmd), then new
    # mount/uts/pid/ipc namespaces; --kill-child ties the container's PID 1 to this process.
    return [
        "nsenter", f"--net={netns.NETNS_DIR / ns}", "--",
        "unshare", "--mount", "--uts", "--ipc", "--pid", "--fork", "--kill-child",
        "--propagation", "private", "--", *argv,
    ]


# ------------------------------------------------------------------------------- enter / exec


def pid1(state: ClusterState, host: str) -> int:
    """Host pid of the PID 1 (supervisord) of `host` ('ctl' or a node name)."""
    outer = state.controller_pid if host == "ctl" else state.node_pids.get(host, 0)
    if not outer:
        raise ClusterError(f"no node {host!r} in cluster {state.name!r}", f"nodes: {', '.join(state.nodes)}")
    try:
        children = Path(f"/proc/{outer}/task/{outer}/children").read_text().split()
    except OSError:
        children = []
    if not children:
        raise ClusterError(
            f"{host} of cluster {state.name!r} is not running",
            f"restart the cluster: `shoal cluster down --name {state.name}` then `up`",
        )
    return int(children[0])


def enter_prefix(state: ClusterState, host: str = "ctl") -> list[str]:
    """argv prefix that runs a command inside the namespaces of the controller or a node."""
    target = pid1(state, host)
    return [
        "nsenter", f"--target={target}", "--mount", "--uts", "--net", "--ipc", "--pid", "--",
        "/usr/bin/env", "-", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/root", "USER=root", "LOGNAME=root", "LANG=C.UTF-8",
    ]


def _ctl_prefix(state: ClusterState) -> list[str]:
    return enter_prefix(state, "ctl")


def slurm_prefix(name: str) -> list[str]:
    """argv prefix for Slurm client commands of cluster `name` (used by dist and study)."""
    return enter_prefix(ClusterDir(name).load(), "ctl")


def node_states(state: ClusterState) -> dict[str, str]:
    """Slurm's view: node name -> state (idle, alloc, down*, ...)."""
    out = run(_ctl_prefix(state) + ["sinfo", "-h", "-N", "-o", "%N %t"], timeout=30, check=False)
    states: dict[str, str] = {}
    if out.returncode != 0:
        return states
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _wait_idle(cd: ClusterDir, state: ClusterState, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.2
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        dead = [h for h in state.all_hosts() if not running(state, h)]
        if dead:
            log = cd.logs / f"{dead[0]}.console"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise ClusterError(
                f"{dead[0]} of cluster {state.name!r} died during boot: {' | '.join(tail)}",
                f"see {log}",
            )
        with contextlib.suppress(ClusterError):
            seen = node_states(state)
            if len(seen) == len(state.nodes) and all(s == "idle" for s in seen.values()):
                return
        time.sleep(delay)
        delay = min(delay * 1.3, 1.0)
    bad = {n: s for n, s in seen.items() if s != "idle"}
    raise ClusterError(
        f"nodes not idle after {timeout:.0f} s: {bad or 'slurmctld did not answer'}",
        f"see the logs: `shoal cluster logs --name {state.name}`",
    )


def running(state: ClusterState, host: str) -> bool:
    """Is the container of `host` ('ctl' or a node) alive?"""
    pid = state.controller_pid if host == "ctl" else state.node_pids.get(host, 0)
    reap()
    return pid > 0 and netns.is_alive(pid)


# --------------------------------------------------------------------------------------- down


def down(name: str, keep_state: bool = False) -> list[str]:
    """Remove every process, namespace and the bridge of cluster `name`; returns what was left.

    Works from the state file alone, so it also cleans up after a crashed or killed run.
    """
    check_prerequisites()
    cd = ClusterDir(name)
    state = cd.load()
    # The state service first: it would otherwise see the nodes die and start them again.
    from shoal.cluster import statebackend

    statebackend.stop_service(name)
    # The storage netns is listed whatever the state says (removal skips what does not exist).
    namespaces = [state.netns(h) for h in dict.fromkeys([*state.netns_hosts(), "storage"])]
    inodes = {i for i in (netns.netns_inode(ns) for ns in namespaces) if i is not None}
    # Ask each supervisord to stop its programs cleanly, then sweep every process left in the
    # cluster's network namespaces (this also catches jobs and anything a node started).
    tops: list[int] = []
    for h in state.all_hosts():
        with contextlib.suppress(ClusterError):
            tops.append(pid1(state, h))
    netns.kill_all(tops, grace=8.0)
    for _ in range(3):
        left = netns.pids_in_netns(inodes)
        if not left:
            break
        netns.kill_all(left, grace=2.0)
    reap()
    netns.delete_network(state.bridge, namespaces)
    remaining = netns.leftovers(state.bridge, namespaces)
    remaining += [f"pid {p}" for p in netns.pids_in_netns(inodes)]
    if not remaining:
        if keep_state:
            state.phase = "down"
            state.node_pids = {}
            state.controller_pid = 0
            cd.save(state)
        else:
            shutil.rmtree(cd.root, ignore_errors=True)
    return remaining
