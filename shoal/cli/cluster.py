"""`shoal cluster` commands: a real Slurm cluster of layer1 node containers on this machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.table import Table

from shoal.cli import jsonout
from shoal.cli.options import LazyConsole, cluster_option, json_option, time_option
from shoal.cluster import config as ccfg
from shoal.cluster import manager
from shoal.cluster.enter import enter_prefix, pid1
from shoal.cluster.state import ClusterDir, list_states
from shoal.cluster.topology import PLAN_MAX_NODES, Addressing, hostlist
from shoal.errors import ClusterError

console = LazyConsole()
_cluster = cluster_option(required_default=True)
MiB = 1 << 20
# Up to this many nodes `status` shows one row per node.
STATUS_ROWS = 32


@click.group()
def cluster() -> None:
    """Virtual Slurm cluster: controller + N layer1 node containers on one machine."""


@cluster.command()
@click.option("--nodes", type=int, default=None, help="Number of compute nodes, 1-200 (default 4).")
@cluster_option(required_default=False)
@click.option("--network", default=None, help=f"Network profile: {', '.join(ccfg.NETWORK_PROFILES)}.")
@click.option("--tmpfs-size", default=None, help="Size of each node's local /tmp (e.g. 2G).")
@click.option("--storage", default=None,
              help=f"Shared /pfs: {', '.join(ccfg.STORAGE_MODES)} (default bind; sshfs crosses the network).")
@click.option("--storage-mbit", type=float, default=None,
              help="Storage host bandwidth in Mbit/s with --storage sshfs (default: the network "
                   "profile's; 0 = unshaped).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="Cluster settings (TOML).")
@json_option
def up(nodes: int | None, cluster: str | None, network: str | None, tmpfs_size: str | None,
       storage: str | None, storage_mbit: float | None, config_file: Path | None,
       as_json: bool) -> None:
    """Boot a cluster; returns when every node is IDLE in Slurm."""
    cfg = ccfg.load(config_file, {"nodes": nodes, "name": cluster, "network": network,
                                  "tmpfs_size": tmpfs_size, "storage": storage,
                                  "storage_mbit": storage_mbit})
    with console.status(f"booting cluster {cfg.name!r} with {cfg.nodes} nodes ..."):
        res = manager.up(cfg)
    st = res.state
    addr = Addressing(st.index)
    if as_json:
        hosts = [{"host": "ctl", "address": addr.controller,
                  "role": "slurmctld, slurmdbd, mariadb, munged; login"}]
        if st.storage == "sshfs":
            hosts.append({"host": "storage", "address": addr.storage, "role": "sshd"})
        hosts += [{"host": n, "address": addr.node(i),
                   "role": "slurmd, munged, sshd, rsyslogd"} for i, n in enumerate(st.nodes, 1)]
        jsonout.emit("cluster.up", {
            "name": st.name, "subnet": addr.subnet, "bridge": ", ".join(st.bridge_plan.bridges),
            "network": cfg.network, "storage": cfg.storage, "layer1_image": str(st.layer1_image),
            "boot_seconds": res.boot_seconds, "hosts": hosts})
        return
    table = Table(title=f"cluster {st.name} ({addr.subnet}, bridge {', '.join(st.bridge_plan.bridges)})")
    for col in ("host", "address", "role"):
        table.add_column(col)
    table.add_row("ctl", addr.controller, "slurmctld, slurmdbd, mariadb, munged; login")
    if st.storage == "sshfs":
        table.add_row("storage", addr.storage, "sshd (SFTP): /pfs for all hosts over sshfs")
    # one row per address block (hostlist form), not one per node: clusters reach 1000s of nodes
    for first, last, addrs in addr.node_blocks(len(st.nodes)):
        table.add_row(hostlist(st.nodes[first - 1:last]), addrs, "slurmd, munged, sshd, rsyslogd")
    console.print(table)
    prof = cfg.profile
    console.print(f"network profile: {prof.name} ({prof.description})")
    rate = cfg.storage_rate_mbit
    console.print(f"storage: {cfg.storage} ({ccfg.STORAGE_MODES[cfg.storage]})"
                  + (f", {rate:g} Mbit/s" if cfg.storage == "sshfs" and rate else ""))
    console.print(f"layer1 image: {st.layer1_image} ({res.layer1_size / 1e6:.0f} MB)")
    console.print(f"[bold green]all {len(st.nodes)} nodes idle[/] in {res.boot_seconds:.1f} s")


@cluster.command()
@_cluster
@click.option("--keep-state", is_flag=True, help="Keep the state directory (logs) for inspection.")
@json_option
def down(cluster: str, keep_state: bool, as_json: bool) -> None:
    """Remove everything of a cluster (also after a crash or kill -9)."""
    left = manager.down(cluster, keep_state=keep_state)
    if left:
        raise ClusterError(f"could not remove: {', '.join(left)}", "run `shoal cluster down` again")
    if as_json:
        jsonout.emit("cluster.down", {"name": cluster, "removed": True})
        return
    console.print(f"cluster {cluster!r} removed")


@cluster.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List virtual clusters on this machine."""
    from shoal.cluster.status import live_phase

    if as_json:
        jsonout.emit("cluster.list", {"clusters": [
            {"name": st.name, "nodes": len(st.nodes), "subnet": f"10.250.{st.index}.0/24",
             "network": str(st.network["name"]), "phase": live_phase(st),
             "boot_seconds": float(st.boot_seconds)} for st in list_states()]})
        return
    table = Table()
    for col in ("name", "nodes", "subnet", "network", "phase", "boot s"):
        table.add_column(col)
    for st in list_states():
        table.add_row(st.name, str(len(st.nodes)), Addressing(st.index).subnet, st.network["name"],
                      live_phase(st), f"{st.boot_seconds:.1f}")
    console.print(table)


@cluster.command()
@_cluster
@json_option
@click.option("--all", "every", is_flag=True,
              help=f"One row per node even for more than {STATUS_ROWS} nodes (default: alike nodes "
                   "in one hostlist row).")
def status(cluster: str, as_json: bool, every: bool) -> None:
    """Nodes, Slurm state, supervisord programs and memory (PSS) per node."""
    from shoal.cluster.status import NodeStatus, cluster_status, faults

    st, nodes = cluster_status(cluster)
    problems = faults(st, nodes)
    if as_json:
        doc = {
            "name": st.name,
            "network": st.network,
            "nodes": [
                {
                    "name": n.name,
                    "slurm_state": n.slurm_state,
                    "running": n.running,
                    "rss_bytes": n.rss_bytes,
                    "pss_bytes": n.pss_bytes,
                    "uss_bytes": n.uss_bytes,
                    "processes": n.processes,
                    "layer1": st.node_images.get(n.name, st.layer1_hash),
                    "programs": {p.name: p.state for p in n.programs},
                }
                for n in nodes
            ],
        }
        doc["faults"] = problems
        jsonout.emit("cluster.status", doc)
        _exit_on_faults(cluster, problems)
        return
    from shoal.cluster.capacity import median

    table = Table(title=f"cluster {st.name}")
    for col in ("node", "slurm", "programs", "PSS MiB", "RSS MiB", "layer1"):
        table.add_column(col)
    # Alike nodes (same Slurm state, program states and image) share one row in hostlist form:
    # rendering one rich row per node took 3 s for 128 nodes.
    groups: dict[tuple[str, bool, str, str], list[NodeStatus]] = {}
    for n in nodes:
        progs = " ".join(
            f"{p.name}:{'[green]' if p.state == 'RUNNING' else '[red]'}{p.state}[/]" for p in n.programs
        )
        image = st.node_images.get(n.name, st.layer1_hash)[:12]
        key = (n.name, n.running, progs, image) if every or len(nodes) <= STATUS_ROWS else \
            (n.slurm_state, n.running, progs, image)
        groups.setdefault(key, []).append(n)
    for (_, running, progs, image), ns in groups.items():
        pss = [n.pss_bytes / MiB for n in ns]
        rss = [n.rss_bytes / MiB for n in ns]
        mem = (f"{pss[0]:.1f}", f"{rss[0]:.1f}") if len(ns) == 1 else \
            (f"{median(pss):.1f} (max {max(pss):.1f})", f"{median(rss):.1f}")
        table.add_row(hostlist([n.name for n in ns]), ns[0].slurm_state,
                      progs or ("-" if running else "[red]not running[/]"), *mem, image)
    console.print(table)
    idle = [n.pss_bytes / MiB for n in nodes if n.running and n.slurm_state == "idle"]
    if idle:
        console.print(f"PSS per idle node: median {median(idle):.1f} MiB, max {max(idle):.1f} MiB "
                      f"({len(idle)} idle of {len(nodes)}); all nodes "
                      f"{sum(n.pss_bytes for n in nodes) / 2**30:.2f} GiB")
    _exit_on_faults(cluster, problems)


def _exit_on_faults(name: str, problems: list[str]) -> None:
    if problems:
        shown = ", ".join(problems[:6]) + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else "")
        raise ClusterError(
            f"cluster {name!r} is not healthy: {shown}",
            f"see `shoal cluster logs --cluster {name} --node NODE`; a dead node stays dead: "
            f"`shoal cluster down --cluster {name}` and `up` again",
        )


@cluster.command("capacity")
@click.option("--nodes", type=int, default=None, help="Also say whether this many nodes fit.")
def capacity_(nodes: int | None) -> None:
    """How many idle nodes fit in this machine's free memory now (from measured PSS per node)."""
    from shoal.cluster import capacity

    cap = capacity.capacity()
    console.print(f"memory available: {cap.available_mb / 1024:.1f} GiB, of which a cluster may use "
                  f"{cap.usable_mb / 1024:.1f} GiB")
    console.print(f"cost per idle node: {cap.cost.source()}; USS {cap.cost.uss_mb:.1f} MiB, "
                  f"+ {capacity.KERNEL_MB_PER_NODE:.0f} MiB kernel; controller {cap.controller_mb:.0f} MiB")
    console.print(f"[bold]at most {cap.max_nodes()} nodes fit now[/] "
                  f"(config bound {ccfg.MAX_NODES}; address plan {PLAN_MAX_NODES})")
    if nodes is not None:
        capacity.check_nodes(nodes)
        console.print(f"{nodes} nodes fit: about {cap.need_mb(nodes) / 1024:.1f} GiB")


@cluster.command(context_settings={"ignore_unknown_options": True})
@_cluster
@click.option("--node", default=None, help="Run inside this node's container (default: controller).")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec(cluster: str, node: str | None, cmd: tuple[str, ...]) -> None:
    """Run CMD on the controller (login node) or inside a node, with Slurm's environment.

    CMD starts in the caller's working directory, as srun and sbatch do, when that directory
    exists there (the login node shares the host's file systems; a node has only /home and
    /pfs); otherwise in / with a note on stderr."""
    st = ClusterDir(cluster).load()
    host = node or "ctl"
    if node is not None and node not in st.nodes:
        raise ClusterError(f"no node {node!r} in cluster {cluster!r}", f"nodes: {', '.join(st.nodes)}")
    # the login environment of a site whose users run MPI in containers: plain `srun` gets PMIx
    # (slurm.conf keeps MpiDefault=none so shoal's own steps stay cheap; SLURM_MPI_TYPE is srun's
    # --mpi default, and batch jobs inherit it from sbatch)
    login_env = ["SLURM_MPI_TYPE=pmix"] if node is None else []
    argv = enter_prefix(st, host) + login_env + list(cmd)
    cwd = _cwd_inside(pid1(st, host))
    if cwd is not None:
        argv.insert(1, f"--wdns={cwd}")
    else:
        click.echo(f"note: {os.getcwd()} does not exist on {host}; starting in /", err=True)
    os.execvp(argv[0], argv)


def _cwd_inside(pid: int) -> str | None:
    """The caller's cwd if the same path is a directory in the mount namespace of PID."""
    try:
        cwd = os.getcwd()
    except OSError:
        return None
    return cwd if os.path.isdir(f"/proc/{pid}/root{cwd}") else None


@cluster.command()
@_cluster
@click.option("--user", default="root", show_default=True)
@click.argument("node")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def ssh(cluster: str, user: str, node: str, cmd: tuple[str, ...]) -> None:
    """ssh from the controller to NODE (key auth), optionally running CMD."""
    st = ClusterDir(cluster).load()
    if node not in st.nodes:
        raise ClusterError(f"no node {node!r} in cluster {cluster!r}", f"nodes: {', '.join(st.nodes)}")
    prefix = enter_prefix(st, "ctl")
    if user != "root":
        prefix = prefix + ["runuser", "-u", user, "--", "env", f"HOME=/home/{user}", f"USER={user}"]
    argv = prefix + ["ssh", *(["-t"] if not cmd and sys.stdin.isatty() else []), f"{user}@{node}", *cmd]
    os.execvp(argv[0], argv)


@cluster.command()
@_cluster
@click.option("--node", default=None, help="Logs of this node (default: controller).")
@click.option("--lines", "-n", default=40, show_default=True)
def logs(cluster: str, node: str | None, lines: int) -> None:
    """Tail the daemon logs of the controller or of a node."""
    cd = ClusterDir(cluster)
    st = cd.load()
    if node is None:
        files = sorted((cd.ctl / "log").glob("*.log")) + sorted((cd.ctl / "log").glob("*.err"))
    else:
        if node not in st.nodes:
            raise ClusterError(f"no node {node!r} in cluster {cluster!r}", f"nodes: {', '.join(st.nodes)}")
        root = Path(f"/proc/{pid1(st, node)}/root")
        files = sorted((root / "var/log/supervisor").glob("*.log")) + [root / "var/log/slurm/slurmd.log"]
    for f in files:
        if not f.exists():
            continue
        console.rule(str(f))
        text = f.read_text(errors="replace").splitlines()[-lines:]
        click.echo("\n".join(text))


@cluster.command()
@_cluster
@click.argument("node")
@click.argument("program")
@click.argument("action", type=click.Choice(["start", "stop", "restart"]))
def service(cluster: str, node: str, program: str, action: str) -> None:
    """Start, stop or restart PROGRAM under NODE's supervisord (XML-RPC)."""
    from shoal.cluster.status import supervisor_of

    st = ClusterDir(cluster).load()
    sup = supervisor_of(st, node)
    getattr(sup, action)(program)
    state = {p.name: p.state for p in sup.programs()}.get(program, "?")
    console.print(f"{node}: {program} {action}: now {state}")


@cluster.command()
@_cluster
@click.option("--node", "nodes", multiple=True, help="Upgrade only these nodes (repeatable).")
@click.option("--image-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A layer1 image directory (default: the current build of the layer1 recipe).")
@time_option("--drain-timeout", default="10", help="How long to wait for a node's jobs to finish")
def upgrade(cluster: str, nodes: tuple[str, ...], image_dir: Path | None, drain_timeout: float) -> None:
    """Rolling upgrade: swap each node's layer1 container (drain, swap, resume), one at a time."""
    import hashlib

    from shoal.cluster.upgrade import NodeUpgrade
    from shoal.cluster.upgrade import upgrade as do_upgrade

    if image_dir is None:
        from shoal.images.layer1 import ensure_layer1

        img = ensure_layer1()
        path, h = Path(img.path), img.hash
    else:
        path = image_dir.resolve()
        h = "dir-" + hashlib.sha256(str(path).encode()).hexdigest()[:16]

    def show(rec: NodeUpgrade) -> None:
        console.print(f"{rec.node}: {rec.old_hash[:12]} -> {rec.new_hash[:12]} "
                      f"(drain {rec.drain_seconds:.1f} s, swap {rec.swap_seconds:.1f} s)")

    done = do_upgrade(cluster, path, h, list(nodes) or None, drain_timeout, on_node=show)
    console.print(f"{len(done)} node(s) upgraded; cluster {cluster!r} runs {h[:12]}")
