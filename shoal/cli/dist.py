"""`shoal dist` and `shoal run` commands."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from shoal.cli import jsonout
from shoal.cli.options import NODE_COUNT, LazyConsole, cluster_option, json_option, time_option
from shoal.errors import DistError
from shoal.slurm import timespec
from shoal.staging import driver
from shoal.staging.registry import get_method, method_names

console = LazyConsole()
# `shoal run`'s stdout is the command's, as with srun: its staging table goes to stderr
err_console = LazyConsole(stderr=True)


def _mib(v: object) -> str:
    return f"{v / 2**20:.1f}" if isinstance(v, int) else "-"


def dist_table(result: driver.DistResult) -> Table:
    t = Table(title=f"{result.method}: {result.image} on {len(result.nodes)} nodes "
                    f"(job {result.job}, {result.seconds:.2f} s"
                    + (f", {get_method(result.method).collective} "
                       f"{result.collective_seconds:.2f} s"
                       if result.collective_seconds is not None else "") + ")")
    for col in ("node", "ok", "stage s", "shared read MiB", "net rx MiB", "net tx MiB", "CPU s",
                "local peak MiB", "verify", "staged / error"):
        t.add_column(col, justify="right" if col.endswith(("s", "MiB")) else "left")
    for node in result.nodes:
        rec = result.records.get(node, {})
        ok = node not in result.failed and bool(rec.get("ok"))
        v = rec.get("verify")
        t.add_row(
            node, "[green]yes[/]" if ok else "[red]NO[/]",
            f"{rec['stage_seconds']:.3f}" if isinstance(rec.get("stage_seconds"), float) else "-",
            _mib(rec.get("stage_bytes_from_storage")), _mib(rec.get("bytes_net_rx")),
            _mib(rec.get("bytes_net_tx")),
            f"{rec['stage_cpu_seconds']:.2f}" if isinstance(rec.get("stage_cpu_seconds"), float) else "-",
            _mib(rec.get("peak_bytes")),
            "-" if not isinstance(v, dict) else ("ok" if v.get("ok") else "[red]BAD[/]"),
            str(rec.get("staged")) if ok else f"[red]{result.failed.get(node, '')}[/]",
        )
    return t


def dist_doc(result: driver.DistResult) -> dict[str, Any]:
    """The `dist` --json document (also the `staging` part of `run`'s)."""
    return {
        "job": result.job, "method": result.method, "image": result.image, "ok": result.ok,
        "seconds": result.seconds, "collective_seconds": result.collective_seconds,
        "nodes": [json.loads(line) for line in result.json_lines()],
    }


_method_option = click.option(
    "--method", "-m", type=click.Choice(method_names()),
    help="Distribution method [required; for dist: unless --cleanup].")
_time_help = "Time limit of the allocation shoal creates (sbatch --time)"
_timeout_option = time_option("--timeout", default="10", help="How long each step may take", step=True)
_sbatch_option = click.option(
    "--sbatch-arg", "sbatch_args", multiple=True, metavar="ARG",
    help="Extra sbatch option for the allocation shoal creates, e.g. --sbatch-arg=--account=proj "
         "--sbatch-arg=--qos=debug (repeatable; also --constraint, --reservation, ...).")


def _site_args(args: tuple[str, ...]) -> tuple[str, ...]:
    """The site's sbatch options (/etc/shoal/shoal.toml), then the command's (which win)."""
    from shoal import siteconfig

    return (*siteconfig.load().sbatch_args, *args)


@click.command("dist")
@click.argument("image", required=False)
@_method_option
@click.option("--verify", is_flag=True, help="compare every node's staged tree to the manifest")
@click.option("--cleanup", "do_cleanup", is_flag=True,
              help="remove what staging left on the nodes (IMAGE optional: all of the job)")
@json_option
@cluster_option(required_default=False)
@click.option("--job", help="allocation to use (default: $SLURM_JOB_ID)")
@click.option("--nodes", "-N", type=NODE_COUNT,
              help="no allocation: allocate N nodes, stage, clean up, release (a measurement)")
@time_option("--time", "time_limit", default="60", help=_time_help)
@_sbatch_option
@click.option("--partition", "-p", default=None, help="partition of the allocation shoal creates")
@click.option("--fanout", type=click.IntRange(1, 64),
              help="children per node of a broadcast: sbcast (default 8), bcast (default 1: chain)")
@click.option("--chunk", type=click.IntRange(4096, 64 << 20), default=driver.BCAST_CHUNK,
              show_default=True, help="bcast: bytes per chunk")
@click.option("--compress", is_flag=True, help="sbcast --compress")
@_timeout_option
def dist(image: str | None, method: str | None, verify: bool, do_cleanup: bool,
         as_json: bool, cluster: str | None, job: str | None, nodes: int | None,
         time_limit: float, sbatch_args: tuple[str, ...], partition: str | None,
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
        alloc = driver.allocate(site, nodes, time_limit=timespec.to_slurm(time_limit),
                                partition=partition, sbatch_args=_site_args(sbatch_args))
        owned = True
    try:
        result = driver.distribute(site, alloc, method, image, verify=verify, fanout=fanout,
                                   compress=compress, timeout=timeout, chunk=chunk)
        console.print(dist_table(result))
        if as_json:
            jsonout.emit("dist", dist_doc(result))
        driver.raise_if_failed(result)
        if owned:
            driver.cleanup(site, alloc, image, timeout=timeout)
    finally:
        if owned:
            driver.release(site, alloc.job)


@click.command("run", context_settings={"ignore_unknown_options": False})
@click.option("--image", "-i", required=True, help="image in the store")
@click.option("--method", "-m", type=click.Choice(method_names()), required=True,
              help="distribution method")
@click.option("--nodes", "-N", type=NODE_COUNT, help="allocate N nodes (default: current allocation)")
@cluster_option(required_default=False)
@click.option("--ntasks-per-node", type=click.IntRange(1, 4096), default=1, show_default=True)
@click.option("--srun-arg", "srun_args", multiple=True, help="extra srun option (repeatable)")
@_sbatch_option
@click.option("--partition", "-p", default=None, help="partition of the allocation shoal creates")
@click.option("--verify", is_flag=True, help="verify the staged tree on every node first")
@json_option
@time_option("--time", "time_limit", default="60", help=_time_help)
@click.option("--fanout", type=click.IntRange(1, 64),
              help="children per node of a broadcast: sbcast (default 8), bcast (default 1: chain)")
@click.option("--chunk", type=click.IntRange(4096, 64 << 20), default=driver.BCAST_CHUNK,
              show_default=True, help="bcast: bytes per chunk")
@click.option("--compress", is_flag=True, help="sbcast --compress")
@_timeout_option
@click.argument("command", nargs=-1, required=True)
@click.pass_context
def run_cmd(ctx: click.Context, image: str, method: str, nodes: int | None, cluster: str | None,
            ntasks_per_node: int, srun_args: tuple[str, ...], sbatch_args: tuple[str, ...],
            partition: str | None, verify: bool, as_json: bool, time_limit: float,
            fanout: int | None, chunk: int, compress: bool, timeout: float,
            command: tuple[str, ...]) -> None:
    """Stage IMAGE with a method and run COMMAND in it on every node (srun + ch-run).

    shoal exits with COMMAND's exit status, as srun does."""
    site = driver.site_for(cluster)

    def staged(result: driver.DistResult) -> None:
        err_console.print(dist_table(result))

    ran = driver.run_in_image(
        site, image, method, command, nodes=nodes, ntasks_per_node=ntasks_per_node,
        srun_args=srun_args, time_limit=timespec.to_slurm(time_limit), verify=verify,
        fanout=fanout, compress=compress, timeout=timeout, on_staged=staged, chunk=chunk,
        sbatch_args=_site_args(sbatch_args), partition=partition,
    )
    if as_json:
        jsonout.emit("run", {
            "returncode": ran.returncode, "command_seconds": ran.seconds, "stdout": ran.stdout,
            "stderr": ran.stderr, "staging": dist_doc(ran.dist),
            "cleanup": [{"node": n, **ran.cleanup[n]} for n in sorted(ran.cleanup)]})
    else:
        click.echo(ran.stdout, nl=False)
        click.echo(ran.stderr, nl=False, err=True)
    if ran.returncode != 0:
        click.echo(f"shoal: the command exited {ran.returncode} in the container", err=True)
        # srun's convention: the job's exit status is ours
        ctx.exit(ran.returncode)
