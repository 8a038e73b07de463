"""`shoal state` commands: the node state service and its client (everything but `serve` goes
through the service's HTTP API)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from shoal.cli import jsonout
from shoal.cli.options import cluster_option
from shoal.errors import ConfigError
from shoal.state.client import StateClient

console = Console(highlight=False)


def _client(cluster: str | None, socket: str | None, url: str | None) -> StateClient:
    if cluster:
        from shoal.cluster import statebackend
        from shoal.cluster.state import ClusterDir

        ClusterDir(cluster).load()  # "no virtual cluster named ..." rather than a socket error
        return StateClient(socket_path=str(statebackend.socket_path(cluster)))
    return StateClient(socket_path=socket, url=url)


def _target(f: Any) -> Any:
    f = click.option("--url", default=None, help="API over TCP (writes need munge), e.g. http://ctl:6830.")(f)
    f = click.option("--socket", "socket_", default=None, help="API unix socket (peer credentials).")(f)
    return cluster_option(required_default=False)(f)


@click.group()
def state() -> None:
    """Node state engine and Slurm bridge: desired vs discovered state of every node."""


@state.command()
@cluster_option(required_default=False)
@click.option("--nodes", default=None, help="A site's nodes as a Slurm host list, e.g. 'cn[001-128]'.")
@click.option(
    "--node-address",
    multiple=True,
    metavar="NAME=ADDR",
    help="Address a node's events must come from (repeatable; default: any, authenticated).",
)
@click.option(
    "--socket",
    "socket_",
    type=click.Path(path_type=Path),
    default=None,
    help="Unix socket for the API (its directory is made root-only).",
)
@click.option(
    "--listen",
    default=None,
    metavar="ADDR:PORT",
    help="TCP address on the cluster network (never a wildcard).",
)
@click.option("--db", type=click.Path(path_type=Path), default=None, help="SQLite state database.")
@click.option("--admin-uid", type=int, multiple=True, help="uids that may change state (default 0).")
@click.option("--munge-socket", default=None, help="munged socket for checking credentials.")
@click.option(
    "--heartbeat-timeout",
    type=click.FloatRange(0, 86400),
    default=120.0,  # EngineConfig.heartbeat_timeout (imported lazily: `shoal --help` stays fast)
    show_default=True,
    help="Seconds without events before a node counts as unresponsive (0: never).",
)
@click.option(
    "--slurm-poll",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds between reads of Slurm's node states.",
)
def serve(
    cluster: str | None,
    nodes: str | None,
    node_address: tuple[str, ...],
    socket_: Path | None,
    listen: str | None,
    db: Path | None,
    admin_uid: tuple[int, ...],
    munge_socket: str | None,
    heartbeat_timeout: float,
    slurm_poll: float,
) -> None:
    """Run the state service until SIGTERM (a virtual cluster's, or a site's with --nodes)."""
    from shoal.slurm.client import SlurmClient
    from shoal.slurm.hostlist import expand
    from shoal.state.backend import Backend, PlainBackend
    from shoal.state.engine import EngineConfig
    from shoal.state.service import ServiceConfig, parse_listen, run_service

    ecfg = EngineConfig(heartbeat_timeout=heartbeat_timeout, slurm_poll=slurm_poll)
    backend: Backend
    if cluster:
        if nodes:
            raise ConfigError("give --cluster or --nodes, not both")
        from shoal.cluster import statebackend

        backend, client, scfg = statebackend.service_setup(cluster, ecfg)
    else:
        if not nodes or not db:
            raise ConfigError(
                "a site's service needs --nodes and --db (or use --cluster NAME)", "see docs/STATE.md"
            )
        addresses = dict.fromkeys(expand(nodes), "")
        for item in node_address:
            name, sep, addr = item.partition("=")
            if not sep or name not in addresses:
                raise ConfigError(f"--node-address {item!r}: expected NAME=ADDR for a node in --nodes")
            addresses[name] = addr
        backend = PlainBackend(addresses)
        client = SlurmClient(timeout=30)
        scfg = ServiceConfig(db=db, engine=ecfg)
        if not socket_ and not listen:
            raise ConfigError("the service needs --socket or --listen (or both)")
    if socket_:
        scfg.socket = socket_
    if listen:
        scfg.listen = parse_listen(listen)
    if db:
        scfg.db = db
    if admin_uid:
        scfg.admin_uids = set(admin_uid)
    if munge_socket:
        scfg.munge_socket = munge_socket
    asyncio.run(run_service(scfg, backend, client))


def _age(t: float) -> str:
    return "-" if not t else f"{time.time() - t:.0f}s"


@state.command()
@click.argument("node", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON document (docs/JSON.md).")
@_target
def show(node: str | None, as_json: bool, cluster: str | None, socket_: str | None, url: str | None) -> None:
    """Desired and discovered state of every node (or one)."""
    c = _client(cluster, socket_, url)
    data = c.request("GET", f"/nodes/{node}" if node else "/nodes")
    if as_json:
        if node:
            data = {"summary": c.request("GET", "/"), "nodes": [data]}
        jsonout.emit("state.show", data)
        return
    rows = [data] if node else data["nodes"]
    t = Table(title=None if node else _summary(data["summary"]))
    for col in ("node", "phase", "health", "slurm", "image", "programs", "seen", "transition", "reason"):
        t.add_column(col)
    for r in rows:
        d, cfg = r["dsc"], r["cfg"]
        img = os.path.basename(d["image"]) if d["image"] else "?"
        if cfg["image"] and cfg["image"] != d["image"]:
            img += f" -> {os.path.basename(cfg['image'])}"
        progs = " ".join(f"{k}={v}" for k, v in sorted(d["programs"].items()) if v != "RUNNING") or (
            "all RUNNING" if d["programs"] else "?"
        )
        tr = r["transition"]
        t.add_row(
            r["name"] + (" (frozen)" if r["frozen"] else ""),
            r["phase"],
            r["health"],
            "+".join([d["slurm_state"], *[f.lower() for f in d["slurm_flags"]]]) or "?",
            img,
            progs,
            _age(d["heartbeat"]),
            tr["name"] if tr else "",
            r["reason"] or r["health_reason"],
        )
    console.print(t)


def _summary(s: dict[str, Any]) -> str:
    return f"{s['nodes']} nodes, {s['unavailable']} unavailable (max {s['max_unavailable']})" + (
        ", cluster FROZEN" if s["frozen"] else ""
    )


@state.command(name="set")
@click.option("--image", default=None, help="Desired layer1 image: layer1:HASH or a tree's path.")
@click.option("--power", type=click.Choice(["on", "off"]), default=None, help="Desired power state.")
@click.option("--max-unavailable", type=int, default=None, help="Nodes out of service at once (rolling).")
@click.option("--node", "nodes", multiple=True, help="Only these nodes (repeatable; default all).")
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Wait until every node reached the desired state (or one failed).",
)
@_target
def set_(
    image: str | None,
    power: str | None,
    max_unavailable: int | None,
    nodes: tuple[str, ...],
    wait_s: float | None,
    cluster: str | None,
    socket_: str | None,
    url: str | None,
) -> None:
    """Set desired state; the engine converges (e.g. a rolling upgrade K nodes at a time)."""
    c = _client(cluster, socket_, url)
    body: dict[str, Any] = {
        k: v
        for k, v in (("image", image), ("power", power), ("max_unavailable", max_unavailable))
        if v is not None
    }
    if nodes:
        body["nodes"] = list(nodes)
    out = c.request("PATCH", "/cfg/nodes", body)
    console.print(f"desired state set for {len(out['nodes'])} node(s)")
    if wait_s is not None:
        wait_converged(c, out["nodes"], wait_s)


def wait_converged(c: StateClient, names: list[str], timeout: float) -> dict[str, Any]:
    """Poll until NAMES are ready on their desired image; ShoalError on a failure or timeout."""
    from shoal.state.client import StateAPIError

    deadline = time.monotonic() + timeout
    with console.status("converging") as status:
        while True:
            data = c.request("GET", "/nodes")
            rows = [r for r in data["nodes"] if r["name"] in names]
            failed = [r for r in rows if r["phase"] == "failed"]
            if failed:
                raise StateAPIError(
                    f"{failed[0]['name']} failed: {failed[0]['reason']}",
                    "see `shoal state show`; `shoal state thaw NODE` tries again",
                )
            done = [
                r
                for r in rows
                if r["phase"] == "ready"
                and r["transition"] is None
                and r["health"] == "ok"
                and (not r["cfg"]["image"] or r["cfg"]["image"] == r["dsc"]["image"])
            ]
            status.update(f"{len(done)}/{len(rows)} nodes converged")
            if len(done) == len(rows):
                return dict(data)
            if time.monotonic() > deadline:
                raise StateAPIError(
                    f"{len(rows) - len(done)} node(s) not converged after {timeout:g} s",
                    "see `shoal state show`",
                )
            time.sleep(0.5)


@state.command()
@click.argument("nodes", nargs=-1)
@_target
def freeze(nodes: tuple[str, ...], cluster: str | None, socket_: str | None, url: str | None) -> None:
    """Stop driving NODES (default: the whole cluster); discovery goes on."""
    out = _client(cluster, socket_, url).request("POST", "/freeze", {"nodes": list(nodes)} if nodes else {})
    console.print(f"frozen: {', '.join(out['nodes'])}")


@state.command()
@click.argument("nodes", nargs=-1)
@_target
def thaw(nodes: tuple[str, ...], cluster: str | None, socket_: str | None, url: str | None) -> None:
    """Drive NODES again (default: the whole cluster); clears a failed node's failure."""
    out = _client(cluster, socket_, url).request("POST", "/thaw", {"nodes": list(nodes)} if nodes else {})
    console.print(f"thawed: {', '.join(out['nodes'])}")


@state.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they happen.")
@click.option("--after", type=int, default=0, show_default=True, help="Start after this event id.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (docs/JSON.md); not with --follow.")
@_target
def events(
    follow: bool, after: int, as_json: bool, cluster: str | None, socket_: str | None, url: str | None
) -> None:
    """The event log (phases, transitions, Slurm updates, node reports)."""
    c = _client(cluster, socket_, url)
    if as_json and follow:
        raise ConfigError("--json prints one document: use it without --follow")
    # Without --follow: the log up to the newest event the service had when asked.
    newest = None if follow else int(c.request("GET", "/")["last_event"])
    collected: list[dict[str, Any]] = []
    for ev in c.events(after=after) if newest is None or after < newest else []:
        if as_json:
            collected.append(ev)
        else:
            t = (
                time.strftime("%H:%M:%S", time.localtime(ev["time"]))
                + f".{int(ev['time'] * 1000) % 1000:03d}"
            )
            data = " ".join(f"{k}={v}" for k, v in sorted(ev["data"].items()))
            click.echo(f"{ev['id']:>7} {t} {ev['node'] or '-':<10} {ev['kind']:<12} {data}")
        if newest is not None and ev["id"] >= newest:
            break
    if as_json:
        jsonout.emit("state.events", {"events": collected})


@state.command()
@_target
def graph(cluster: str | None, socket_: str | None, url: str | None) -> None:
    """The transition graph the engine drives."""
    g = _client(cluster, socket_, url).request("GET", "/graph")
    t = Table()
    for col in ("transition", "from", "to", "requires", "timeout", "on failure", "needs"):
        t.add_column(col)
    for tr in g["transitions"]:
        t.add_row(
            tr["name"],
            tr["from"],
            tr["to"],
            "; ".join(tr["requires"]) or "-",
            f"{tr['timeout']:g}s",
            tr["on_failure"],
            tr["capability"] or "-",
        )
    for e in g["discovered"]:
        t.add_row("(discovered)", e["from"], e["to"], e["when"], "-", "-", "-")
    console.print(t)
