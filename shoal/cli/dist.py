"""`shoal dist` and `shoal run` commands."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from shoal.errors import DistError
from shoal.staging import driver
from shoal.staging.registry import method_names

console = Console(highlight=False)


def _mib(v: object) -> str:
    return f"{v / 2**20:.1f}" if isinstance(v, int) else "-"


def dist_table(result: driver.DistResult) -> Table:
    t = Table(title=f"{result.method}: {result.image} on {len(result.nodes)} nodes "
                    f"(job {result.job}, {result.seconds:.2f} s"
                    + (f", sbcast {result.collective_seconds:.2f} s"
                       if result.collective_seconds is not None else "") + ")")
    for col in ("node", "ok", "stage s", "shared read MiB", "net rx MiB", "local peak MiB",
                "verify", "staged / error"):
        t.add_column(col, justify="right" if col.endswith(("s", "MiB")) else "left")
    for node in result.nodes:
        rec = result.records.get(node, {})
        ok = node not in result.failed and bool(rec.get("ok"))
        v = rec.get("verify")
        t.add_row(
            node, "[green]yes[/]" if ok else "[red]NO[/]",
            f"{rec['seconds']:.3f}" if isinstance(rec.get("seconds"), float) else "-",
            _mib(rec.get("storage_bytes_read")), _mib(rec.get("net_rx_bytes")),
            _mib(rec.get("local_bytes_peak")),
            "-" if not isinstance(v, dict) else ("ok" if v.get("ok") else "[red]BAD[/]"),
            str(rec.get("staged")) if ok else f"[red]{result.failed.get(node, '')}[/]",
        )
    return t


def _write_json(result: driver.DistResult, json_out: Path | None) -> None:
    if json_out is not None:
        with open(json_out, "a") as f:
            for line in result.json_lines():
                f.write(line + "\n")


_method_option = click.option("--method", "-m", type=click.Choice(method_names()),
                              help="distribution method")


@click.command("dist")
@click.argument("image", required=False)
@_method_option
@click.option("--verify", is_flag=True, help="compare every node's staged tree to the manifest")
@click.option("--cleanup", "do_cleanup", is_flag=True,
              help="remove what staging left on the nodes (IMAGE optional: all of the job)")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path),
              help="append one JSON record per node to this file")
@click.option("--cluster", help="virtual cluster name (default: the Slurm on PATH)")
@click.option("--job", help="allocation to use (default: $SLURM_JOB_ID)")
@click.option("--nodes", "-N", type=int,
              help="no allocation: allocate N nodes, stage, clean up, release (a measurement)")
@click.option("--fanout", type=click.IntRange(1, 64),
              help="children per node of a broadcast: sbcast (default 8), bcast (default 1: chain)")
@click.option("--chunk", type=click.IntRange(4096, 64 << 20), default=driver.BCAST_CHUNK,
              show_default=True, help="bcast: bytes per chunk")
@click.option("--compress", is_flag=True, help="sbcast --compress")
@click.option("--timeout", type=float, default=driver.DEFAULT_TIMEOUT, show_default=True,
              help="seconds each step may take")
def dist(image: str | None, method: str | None, verify: bool, do_cleanup: bool,
         json_out: Path | None, cluster: str | None, job: str | None, nodes: int | None,
         fanout: int | None, chunk: int, compress: bool, timeout: float) -> None:
    """Stage IMAGE on every node of the current allocation (or clean up with --cleanup)."""
    site = driver.site_for(cluster)
    alloc = driver.current_allocation(site, job)
    if do_cleanup:
        if alloc is None:
            raise DistError("--cleanup needs an allocation", "run inside it or give --job")
        recs = driver.cleanup(site, alloc, image, timeout=timeout)
        console.print(f"cleaned up job {alloc.job} on {', '.join(sorted(recs))}")
        return
    if image is None or method is None:
        raise click.UsageError("give IMAGE and --method (or --cleanup)")
    owned = False
    if alloc is None:
        if nodes is None:
            raise DistError("not inside an allocation ($SLURM_JOB_ID unset)",
                            "run inside salloc/sbatch, give --job, or --nodes N to allocate")
        alloc = driver.allocate(site, nodes, time_limit="60")
        owned = True
    try:
        result = driver.distribute(site, alloc, method, image, verify=verify, fanout=fanout,
                                   compress=compress, timeout=timeout, chunk=chunk)
        console.print(dist_table(result))
        _write_json(result, json_out)
        driver.raise_if_failed(result)
        if owned:
            driver.cleanup(site, alloc, image, timeout=timeout)
    finally:
        if owned:
            driver.release(site, alloc.job)


@click.command("run", context_settings={"ignore_unknown_options": False})
@click.option("--image", "-i", required=True, help="image in the store")
@_method_option
@click.option("--nodes", "-N", type=int, help="allocate N nodes (default: current allocation)")
@click.option("--cluster", help="virtual cluster name (default: the Slurm on PATH)")
@click.option("--ntasks-per-node", type=int, default=1, show_default=True)
@click.option("--srun-arg", "srun_args", multiple=True, help="extra srun option (repeatable)")
@click.option("--verify", is_flag=True, help="verify the staged tree on every node first")
@click.option("--json-out", type=click.Path(dir_okay=False, path_type=Path),
              help="append the per-node staging records to this file")
@click.option("--time", "time_limit", default="60", show_default=True,
              help="time limit of the allocation shoal creates")
@click.option("--fanout", type=click.IntRange(1, 64),
              help="children per node of a broadcast: sbcast (default 8), bcast (default 1: chain)")
@click.option("--chunk", type=click.IntRange(4096, 64 << 20), default=driver.BCAST_CHUNK,
              show_default=True, help="bcast: bytes per chunk")
@click.option("--compress", is_flag=True, help="sbcast --compress")
@click.option("--timeout", type=float, default=driver.DEFAULT_TIMEOUT, show_default=True)
@click.argument("command", nargs=-1, required=True)
def run_cmd(image: str, method: str | None, nodes: int | None, cluster: str | None,
            ntasks_per_node: int, srun_args: tuple[str, ...], verify: bool,
            json_out: Path | None, time_limit: str, fanout: int | None, chunk: int, compress: bool,
            timeout: float, command: tuple[str, ...]) -> None:
    """Stage IMAGE with a method and run COMMAND in it on every node (srun + ch-run)."""
    if method is None:
        raise click.UsageError("give --method")
    site = driver.site_for(cluster)

    def staged(result: driver.DistResult) -> None:
        console.print(dist_table(result))
        _write_json(result, json_out)

    ran = driver.run_in_image(
        site, image, method, command, nodes=nodes, ntasks_per_node=ntasks_per_node,
        srun_args=srun_args, time_limit=time_limit, verify=verify, fanout=fanout,
        compress=compress, timeout=timeout, on_staged=staged, chunk=chunk,
    )
    if json_out is not None:
        with open(json_out, "a") as f:
            for node in sorted(ran.cleanup):
                f.write(json.dumps(ran.cleanup[node] | {"command_seconds": ran.seconds},
                                   sort_keys=True) + "\n")
    click.echo(ran.stdout, nl=False)
    click.echo(ran.stderr, nl=False, err=True)
    if ran.returncode != 0:
        raise DistError(f"the command exited {ran.returncode} in the container",
                        "its output is above")
