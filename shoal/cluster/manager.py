"""Life cycle of a virtual cluster: up, down, status, exec (the cluster subsystem's API).

Data flow of `up`: validate config -> check root/packages/memory/name -> layer1 image (cached) ->
write state (so a crash can be cleaned) -> secrets, configs -> bridge + netns + veth -> controller
(supervisord: munged, mariadb, slurmdbd, slurmctld) and all nodes (supervisord: rsyslogd, munged,
slurmd, sshd) started in parallel -> wait until Slurm shows every node idle.

The parts have their own modules: secrets.py (keys, made per cluster), controller.py and node.py
(each host's files and start), enter.py (starting and entering namespaces), storage.py (the sshfs
storage host), netns.py (bridge, veths, process sweep); the shell and config they run are files
in shoal/cluster/files/ (scripts.py). This module strings them together and owns `down`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shoal import paths, siteconfig
from shoal.bundle import publish, write_bundle
from shoal.cluster import capacity, cgroups, confine, controller, netns, node, scripts, secrets, storage
from shoal.cluster.config import ClusterConfig
from shoal.cluster.enter import new_namespaces, pid1, slurm_client
from shoal.cluster.slurmconf import (
    Addressing,
    render_hosts,
    render_mpi_conf,
    render_slurm_conf,
    render_slurmdbd_conf,
)
from shoal.cluster.state import ClusterDir, ClusterState, free_index, list_states
from shoal.errors import ClusterError, DependencyError, PrivilegeError, ShoalError
from shoal.fsutil import locked, write_file
from shoal.paths import clusters_root, store_root
from shoal.runner import reap, run, spawn, stop

log = logging.getLogger("shoal.cluster")

REQUIRED_PROGRAMS = [
    "ip", "tc", "nsenter", "unshare", "mount", "pivot_root", "supervisord", "slurmctld", "slurmdbd",
    "munged", "mariadbd", "mariadb-install-db", "ssh-keygen", "sinfo", "srun",
]
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


def check_capacity(cfg: ClusterConfig, layer1: str | None = None) -> None:
    """Refuse a cluster this machine's memory cannot hold (measured cost per node: capacity.py)."""
    capacity.check_nodes(cfg.nodes, layer1)


# ----------------------------------------------------------------------------------------- up


@dataclass(frozen=True)
class UpResult:
    state: ClusterState
    boot_seconds: float
    layer1_size: int
    # seconds from the start of the boot at which each phase ended (where the time goes; also
    # in boot-phases.json of the state dir)
    phases: dict[str, float] = field(default_factory=dict)


class _Clock:
    """Marks of the boot's phases, in seconds since its start."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.marks: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        self.marks[phase] = round(time.monotonic() - self.t0, 3)


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
    clock = _Clock()
    t0 = clock.t0
    # One `up` at a time picks an index and saves it: two at once would take the same index and
    # collide on its veth names.
    with locked(clusters_root() / ".index.lock"):
        taken = {s.index for s in list_states()} | _indices_with_interfaces()
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
        clash = [br for br in state.bridge_plan.bridges if Path(f"/sys/class/net/{br}").exists()]
        if clash:
            raise ClusterError(
                f"bridge {clash[0]} already exists on this host",
                f"a crashed cluster may have left it: `shoal cluster down --name {cfg.name}`",
            )
        cd.save(state)  # from here on, `down` can remove everything
    host_helpers: list[int] = []  # processes `up` starts outside the cluster's namespaces
    try:
        _boot(cfg, cd, state, Path(image.path), clock, host_helpers)
        _wait_idle(cd, state, BOOT_TIMEOUT, clock)
        if cfg.state_service:
            from shoal.cluster import statebackend

            try:
                statebackend.start_service(cfg.name)
            except ClusterError as exc:
                if cfg.health_source == "state":
                    raise  # it is Slurm's only health source: no cluster without it
                # Slurm's own timeouts still watch the nodes: the cluster is usable without it.
                log.warning("%s (%s)", exc.message, exc.hint)
    except BaseException as exc:
        left = _undo_failed_up(cfg.name, host_helpers)
        if left:
            raise ClusterError(
                f"boot of cluster {cfg.name!r} failed ({type(exc).__name__}: {exc}) and its "
                f"cleanup left: {', '.join(left)}"[:400],
                f"remove the rest with `shoal cluster down --name {cfg.name}`",
            ) from exc
        raise
    state.phase = "up"
    state.boot_seconds = time.monotonic() - t0
    cd.save(state)
    clock.mark("all idle")
    with contextlib.suppress(OSError):
        (cd.root / "boot-phases.json").write_text(json.dumps(clock.marks, indent=1))
        record_node_cost(state)
    return UpResult(state, state.boot_seconds, image.size_bytes, dict(clock.marks))


def _undo_failed_up(name: str, host_helpers: list[int]) -> list[str]:
    """Remove what a failed or interrupted `up` created. A second Ctrl-C (or a SIGTERM) must not
    cut this short: that left namespaces, the bridge and daemons behind with a state stuck in
    phase "creating". Returns what could not be removed."""
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        for pid in host_helpers:
            stop(pid)
        return down(name)
    except (ShoalError, OSError) as exc:
        return [f"({exc})"]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def record_node_cost(state: ClusterState, sample: int = capacity.SAMPLE_NODES) -> None:
    """Measure PSS on up to `sample` nodes spread over the cluster; keep it for capacity checks."""
    step = max(1, len(state.nodes) // sample)
    picked = state.nodes[::step][:sample]
    inodes = {n: netns.netns_inode(state.netns(n)) for n in picked}
    by_ns = capacity.processes_by_netns(i for i in inodes.values() if i is not None)
    mems = [capacity.memory_of(by_ns.get(i, [])) for i in inodes.values() if i is not None]
    cost = capacity.cost_from(mems, len(state.nodes), state.layer1_hash)
    if cost is not None:
        capacity.record(cost)


@contextlib.contextmanager
def booted(cfg: ClusterConfig) -> Iterator[UpResult]:
    """A cluster for the length of a with-block (tests, benchmarks, the demo).

    A cluster of the same name left by a killed earlier run is removed first; the teardown always
    runs, is not cut short by a second Ctrl-C or a SIGTERM, and raises ClusterError naming
    anything it could not remove. A block may take the cluster down itself (a test of `down`).
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
            left = down(cfg.name) if ClusterDir(cfg.name).exists() else []
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        if left:
            raise ClusterError(f"taking cluster {cfg.name!r} down left: {', '.join(left)}",
                               f"run `shoal cluster down --name {cfg.name}` again")


def _boot(cfg: ClusterConfig, cd: ClusterDir, state: ClusterState, image: Path, clock: _Clock,
          host_helpers: list[int]) -> None:
    """Everything of `up` between the saved state and the wait for idle nodes, in order."""
    addr = Addressing(state.index)
    for d in (cd.etc_slurm, cd.home, cd.pfs / "store", cd.ctl / "log", cd.ctl / "spool", cd.logs):
        d.mkdir(parents=True, exist_ok=True)
    # /pfs is root's; each user writes in its own /pfs/users/NAME (storage.py: on sshfs storage
    # that directory is mounted through the user's own SFTP session, so the user owns its files)
    storage.make_user_dirs(cd.pfs)
    # Mount points the controller binds over on the host's root filesystem.
    for p in ("/pfs", "/etc/slurm", "/etc/shoal", "/root/.ssh"):
        Path(p).mkdir(parents=True, exist_ok=True)
    store = store_root()
    store.mkdir(parents=True, exist_ok=True)

    # the site configuration of this cluster's login node and nodes (bound at /etc/shoal): what a
    # site's admin writes once, so that `shoal run` there finds the store where the nodes do
    write_file(cd.root / "etc-shoal" / "shoal.toml", siteconfig.render(paths.CLUSTER_STORE_PATH))
    keys = secrets.create(cd, cfg.name, state.index)
    _write_slurm_config(cfg, cd, addr, keys.db_password)
    secrets.place_user_home(cd, keys)
    controller.prepare(cd, keys, render_hosts(cfg, addr), cfg.accounting)
    # mariadb-install-db takes seconds: it runs while the nodes are being prepared
    install_db = controller.start_install_db(cd) if cfg.accounting else None
    if install_db is not None:
        # it runs on the host, outside the cluster's namespaces, so `down` does not find it: a
        # failed `up` stops it (left running, it wrote the datadir again after `down` removed
        # the state directory)
        host_helpers.append(install_db)

    muid, mgid = node.image_ids(image, "munge")
    node_munge = secrets.place_node_munge(cd, keys, muid, mgid)
    _mount_nodes_dir(cd)
    for name in state.nodes:
        node.prepare_node(cd, name)
    clock.mark("files")

    # -- network: the bridges (one per NODES_PER_BRIDGE nodes), a netns + veth per host; the
    # storage host's link gets its own bandwidth (HTB), separate from the per-node links (tbf)
    storage_rate = cfg.storage_rate_mbit if cfg.storage == "sshfs" else None
    htb = netns.htb_args(storage_rate, cfg.profile.burst_kbyte) if storage_rate else []
    links = [(state.netns(h), state.host_veth(h), state.bridge_of(h)) for h in state.netns_hosts()]
    others = sum(len(s.netns_hosts()) for s in list_states() if s.name != state.name)
    netns.ensure_neighbour_table(others + len(links))
    netns.create_network(state.bridge_plan, links, cfg.profile,
                         htb={state.host_veth("storage"): htb} if htb else None)
    clock.mark("network")
    tbf = " ".join(netns.tbf_args(cfg.profile))
    # -- per-host cgroups (accounting, memory limit): PID 1 of each host joins its own
    use_cgroups = cgroups.available()
    write_file(cd.etc_slurm / FABRIC_FILE,
               json.dumps(fabric(cfg, state, addr, use_cgroups), indent=1, sort_keys=True) + "\n")
    for name_ in (scripts.NET_UP, scripts.NODE_INIT, scripts.CONTROLLER_INIT):
        scripts.install(name_, cd.root / name_)
    common = {
        "SHOAL_NET_UP": str(cd.root / scripts.NET_UP),
        "SHOAL_HOME": str(cd.home),
        "SHOAL_PFS": str(cd.pfs),
        "SHOAL_STORE": str(store),
        "SHOAL_ETC_SLURM": str(cd.etc_slurm),
        "SHOAL_ETC_SHOAL": str(cd.root / "etc-shoal"),
        "SHOAL_TBF": tbf,
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    # -- storage = "sshfs": a storage host serves /pfs over the cluster network; controller and
    # nodes mount it with sshfs instead of binding SHOAL_PFS (shoal/cluster/storage.py).
    if cfg.storage == "sshfs":
        storage_env, mount_script = storage.prepare(cd, addr, store, tbf)
        storage_env.update({"SHOAL_TBF": "", "SHOAL_STORAGE_HTB": " ".join(htb)})
        if use_cgroups:
            storage_env.update(cgroups.create(cfg.name, "storage").env())
        state.storage_pid = spawn(
            new_namespaces(state.netns("storage"), ["/bin/sh", str(storage.StorageFiles.of(cd).init_script)]),
            log_path=cd.logs / "storage.console", env={**storage_env, "SHOAL_NET_UP": common["SHOAL_NET_UP"]},
        )
        cd.save(state)
        storage.wait_listening(state.storage_pid, cd.logs / "storage.console")
        common["SHOAL_SSHFS_MOUNT"] = str(mount_script)
        common["SHOAL_STORAGE_LINK"] = f"/sys/class/net/{state.host_veth('storage')}/statistics"
    # -- the mount broker: node root may not mount; the broker does, for Prolog requests that
    # slurmctld vouches for (shoal/cluster/broker.py). The nodes bind their socket at start.
    state.broker_pid = spawn([sys.executable, "-m", confine.BROKER_MODULE, cfg.name],
                             log_path=cd.logs / "broker.log")
    cd.save(state)
    confine.wait_broker(cd, state.broker_pid)
    # the node agent of this shoal in the store, published by root (users cannot write there)
    publish(store)
    # Controller first: it is the critical path. Its start takes seconds (MariaDB, slurmdbd,
    # slurmctld); the nodes boot meanwhile, and slurmd keeps retrying its registration until
    # slurmctld answers. Both the controller and this spawn loop run at BOOT_PRIORITY, the nodes
    # at the caller's: with 128 booting nodes on 2 cores, slurmctld answered 25 s after its
    # start and each spawn took 90 ms at equal priority. A real controller has its own machine.
    if install_db is not None:
        controller.wait_install_db(cd, install_db)
    env = controller.controller_env(common, cd, addr.controller, cfg.accounting)
    if use_cgroups:
        cgroups.weigh(cfg.name, len(state.netns_hosts()) + cgroups.CONTROLLER_SHARES // cgroups.HOST_SHARES)
        env.update(cgroups.create(cfg.name, "ctl", cpu_shares=cgroups.CONTROLLER_SHARES).env())
    with _priority(BOOT_PRIORITY) as raised:
        state.controller_pid = controller.start_controller(cd, state, env)
        cd.save(state)
        clock.mark("controller spawned")
        _spawn_nodes(cfg, cd, state, image, addr, common, node_munge, (muid, mgid), raised, use_cgroups)
    cd.save(state)
    clock.mark("nodes spawned")


def _spawn_nodes(cfg: ClusterConfig, cd: ClusterDir, state: ClusterState, image: Path, addr: Addressing,
                 common: dict[str, str], node_munge: Path, munge_ids: tuple[int, int], nicer: int,
                 use_cgroups: bool) -> None:
    muid, mgid = munge_ids
    for i, name in enumerate(state.nodes, 1):
        nd = cd.node(name)
        node.save_env(cd, name, {
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
            "SHOAL_ETC_MUNGE": str(node_munge),
            "SHOAL_BROKER_SOCKET": str(confine.socket_path(cd, name)),
            "SHOAL_DEVICES_CGROUP": str(confine.create_devices(cfg.name, name))
            if confine.available() else "",
            "SHOAL_CAPS": confine.caps_arg(),
            **(cgroups.create(cfg.name, name, cfg.memory_mb_per_node).env() if use_cgroups else {}),
        })
        state.node_images[name] = state.layer1_hash
    # A few spawns at a time: each waits until its child has exec'd, which took 60-90 ms per node
    # once a hundred nodes were booting on the 2 cores, 9 s for 128 nodes one after another.
    with ThreadPoolExecutor(max_workers=SPAWN_THREADS) as pool:
        pids = pool.map(lambda n: node.start_node(cd, state, n, nicer=nicer), state.nodes)
        state.node_pids.update(zip(state.nodes, pids, strict=True))


SPAWN_THREADS = 4
# Niceness of `up` while it spawns, and so of the controller it starts (see _boot).
BOOT_PRIORITY = -10


@contextlib.contextmanager
def _priority(nice: int) -> Iterator[int]:
    """Run this process at niceness `nice` for the block; yields how much nicer than it the
    processes started inside should run to get the old niceness back (0 if it could not change)."""
    old = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:  # not allowed: everything runs at the old niceness
        yield 0
        return
    try:
        yield old - nice
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, old)


FABRIC_FILE = "shoal-fabric.json"  # in /etc/slurm: read by shoal.staging.accounting.fabric


def fabric(cfg: ClusterConfig, state: ClusterState, addr: Addressing, use_cgroups: bool
           ) -> dict[str, object]:
    """The capacities a job needs to say what bound it (link and storage bandwidth, cores)."""
    return {
        "cluster": cfg.name,
        "profile": cfg.network,
        "link_mbit": cfg.profile.rate_mbit,
        "storage": cfg.storage,
        "storage_mbit": cfg.storage_rate_mbit if cfg.storage == "sshfs" else None,
        "storage_ip": addr.storage if cfg.storage == "sshfs" else None,
        "host_cores": os.cpu_count() or 1,
        "cpus_per_node": cfg.cpus_per_node,
        "memory_mb_per_node": cfg.memory_mb_per_node,
        "nodes": len(state.nodes),
        "cgroups": use_cgroups,
    }


def _write_slurm_config(cfg: ClusterConfig, cd: ClusterDir, addr: Addressing, db_password: str) -> None:
    """/etc/slurm of every host (read-only on the nodes): configs, Prolog/Epilog, the node agent."""
    write_file(cd.etc_slurm / "slurm.conf", render_slurm_conf(cfg, addr, str(cd.ctl)))
    write_file(cd.etc_slurm / "slurmdbd.conf", render_slurmdbd_conf(str(cd.ctl), db_password), 0o600)
    write_file(cd.etc_slurm / "mpi.conf", render_mpi_conf())
    scripts.install(scripts.PROLOG, cd.etc_slurm / "prolog.sh", 0o755)
    scripts.install(scripts.EPILOG, cd.etc_slurm / "epilog.sh", 0o755)
    # The node agent bundle (stdlib-only zipapp) for the Prolog/Epilog privileged hook.
    write_bundle(cd.etc_slurm / "shoal-nodeagent.py")
    if cfg.state_service:
        from shoal.cluster import statebackend

        # Where each node's supervisord event listener sends its events (shoal/state).
        write_file(cd.etc_slurm / "shoal-state.conf", statebackend.listener_conf(addr.controller))


def _mount_nodes_dir(cd: ClusterDir) -> None:
    """The nodes' upper layers live in a tmpfs: ~45 files and directories per node cost 2-3 ms
    each to create and to remove on this machine's disk under load (7.7 s of an 11 s `down` at
    64 nodes); on a tmpfs they are memory, and `down` drops them all with one umount. What a
    node writes to its root (logs) is small and, like a diskless node's, in memory."""
    d = cd.nodes_dir
    d.mkdir(parents=True, exist_ok=True)
    if not _is_mountpoint(d):
        run(["mount", "-t", "tmpfs", "-o", f"mode=0755,size={NODES_TMPFS_SIZE}", "shoal-nodes", str(d)])


# Upper bound of the nodes' tmpfs (it takes only what the nodes write).
NODES_TMPFS_SIZE = "25%"


def _is_mountpoint(path: Path) -> bool:
    want = os.fspath(path)
    return any(line.split()[4] == want for line in Path("/proc/self/mountinfo").read_text().splitlines())


def _unmount_nodes_dir(cd: ClusterDir, keep: bool) -> None:
    """Drop the nodes' tmpfs (keep: copy it to disk first, for `down --keep-state`)."""
    d = cd.nodes_dir
    if not _is_mountpoint(d):
        return
    saved = d.with_name("nodes.kept")
    if keep:
        shutil.rmtree(saved, ignore_errors=True)
        shutil.copytree(d, saved, symlinks=True)
    run(["umount", "--lazy", str(d)], check=False)
    if keep and not _is_mountpoint(d):
        shutil.rmtree(d, ignore_errors=True)
        os.rename(saved, d)


# ------------------------------------------------------------------------------- wait


def node_states(state: ClusterState) -> dict[str, str]:
    """Slurm's view: node name -> compact state (idle, alloc, down*, ...); {} when slurmctld
    does not answer (yet)."""
    try:
        return slurm_client(state).node_states()
    except ShoalError:
        return {}


def _wait_idle(cd: ClusterDir, state: ClusterState, timeout: float, clock: _Clock | None = None) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.2
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        alive = set(node.running_hosts(state, state.all_hosts()))
        dead = [h for h in state.all_hosts() if h not in alive]
        if dead:
            log = cd.logs / f"{dead[0]}.console"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise ClusterError(
                f"{dead[0]} of cluster {state.name!r} died during boot: {' | '.join(tail)}",
                f"see {log}",
            )
        with contextlib.suppress(ClusterError):
            seen = node_states(state)
            if clock is not None and seen and "slurmctld answers" not in clock.marks:
                clock.mark("slurmctld answers")
            if clock is not None and "half idle" not in clock.marks and \
                    sum(s == "idle" for s in seen.values()) * 2 >= len(state.nodes):
                clock.mark("half idle")
            if len(seen) == len(state.nodes) and all(s == "idle" for s in seen.values()):
                return
        time.sleep(delay)
        delay = min(delay * 1.3, 1.0)
    bad = {n: s for n, s in seen.items() if s != "idle"}
    raise ClusterError(
        f"nodes not idle after {timeout:.0f} s: {bad or 'slurmctld did not answer'}",
        f"see the logs: `shoal cluster logs --name {state.name}`",
    )


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
    # Every process of the cluster gets TERM at once, and a short grace: supervisord stops its
    # programs one priority group per main-loop tick (~1 s each), which took 8 s and more with
    # hundreds of nodes on 2 cores; everything is removed anyway. What is left is killed (the
    # death of a pid namespace's PID 1 takes every process in it along).
    netns.kill_all([*tops, *(p for p in netns.pids_in_netns(inodes) if p not in tops)], grace=2.0)
    for _ in range(3):
        left = netns.pids_in_netns(inodes)
        if not left:
            break
        netns.kill_all(left, grace=2.0)
    # the broker lives in the host's namespaces: stopped by its pid, once the nodes are gone
    if state.broker_pid and confine.is_broker(state.broker_pid, name):
        netns.kill_all([state.broker_pid], grace=5.0)
    reap()
    # The host ends of the veths first: deleting a netns frees its veth pair later, in the
    # kernel's own time, and a new cluster given this index at once would find the names taken.
    veths = [state.host_veth(h) for h in dict.fromkeys([*state.netns_hosts(), "storage"])]
    netns.delete_links(veths)
    netns.delete_network(state.bridge_plan, namespaces)
    remaining = netns.leftovers(state.bridge_plan, namespaces)
    remaining += [f"veth {v}" for v in veths if netns.link_exists(v)]
    remaining += [f"pid {p}" for p in netns.pids_in_netns(inodes)]
    if state.broker_pid and confine.is_broker(state.broker_pid, name):
        remaining.append(f"mount broker pid {state.broker_pid}")
    remaining += confine.remove_devices(name)
    if not any(r.startswith("pid ") for r in remaining):
        remaining += cgroups.remove(name)
    if not remaining:
        _unmount_nodes_dir(cd, keep_state)
        if _is_mountpoint(cd.nodes_dir):
            remaining.append(f"mount {cd.nodes_dir}")
    if not remaining:
        if keep_state:
            state.phase = "down"
            state.node_pids = {}
            state.controller_pid = 0
            cd.save(state)
        else:
            shutil.rmtree(cd.root, ignore_errors=True)
    return remaining


def _indices_with_interfaces() -> set[int]:
    """Cluster indices whose host-side veths (sv<index>c, sv<index>n<i>, ...) still exist: a
    crashed cluster of someone else may have left one; its index is not free."""
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for name in os.listdir("/sys/class/net"):
            m = re.match(r"sv(\d+)[cns]", name)
            if m:
                out.add(int(m.group(1)))
    return out
