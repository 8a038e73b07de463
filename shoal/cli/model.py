"""`shoal model fit|predict|validate`: carry study measurements to a site's scale."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from shoal.cli import jsonout
from shoal.cli.options import LazyConsole, json_option

# shoal.model imports numpy and scipy (~0.5 s): each command imports what it uses, so that
# `shoal --help` and the other commands start fast (tests/security/test_startup.py)

console = LazyConsole()


def _nodes(text: str) -> list[int]:
    try:
        vals = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise click.BadParameter(f"{text!r}: give node counts like 1,32,128") from None
    if not vals or vals[0] < 1:
        raise click.BadParameter("node counts must be >= 1")
    return vals


@click.group("model")
def model() -> None:
    """Fit a cost model to a study and predict a site's scale (docs/MODEL.md)."""


@model.command("fit")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=Path("model.json"),
              show_default=True, help="Where to write the fitted model.")
@json_option
def fit_cmd(results: tuple[Path, ...], out: Path, as_json: bool) -> None:
    """Fit per method and workload from RESULTS (a study directory or its JSONL export)."""
    from shoal.model import data, fit, store

    groups = fit.fit(data.load_all(results))
    store.save(groups, out, source=" ".join(map(str, results)))
    if as_json:
        jsonout.emit("model.fit", {"model": str(out), "groups": [
            {"method": g.method, "workload": g.workload, **asdict(g.params), "n_obs": g.n_obs,
             "shared_identified": g.shared_identified, "rel_rmse": g.rel_rmse} for g in groups]})
        return
    t = Table(title="model fitted from " + ", ".join(map(str, results)))
    for col in ("method", "workload", "eta", "l0 s", "l1 s/doubling", "runs", "rel. RMSE",
                "shared term"):
        t.add_column(col)
    for g in groups:
        t.add_row(g.method, g.workload, f"{g.params.eta:.2f}", f"{g.params.l0:.2f}",
                  f"{g.params.l1:.2f}", str(g.n_obs), f"{100 * g.rel_rmse:.0f} %",
                  "fitted" if g.shared_identified else "never bound: eta at the floor (1)")
    console.print(t)
    console.print(f"wrote {out}")


@model.command("predict")
@click.option("--model", "model_path", type=click.Path(path_type=Path), required=True,
              help="model.json from `shoal model fit`. [required]")
@click.option("--site", "site_path", type=click.Path(path_type=Path), required=True,
              help="SITE.toml describing the site (examples/sites/). [required]")
@click.option("--nodes", "nodes_text", default="1,32,128,512,2048", show_default=True,
              help="Comma-separated node counts.")
@json_option
def predict_cmd(model_path: Path, site_path: Path, nodes_text: str, as_json: bool) -> None:
    """Predicted time-to-solution per method and workload at a site, winners and crossovers."""
    from shoal.model import predict, store
    from shoal.model.site import load_site

    nodes = _nodes(nodes_text)
    groups = store.load(model_path)
    site = load_site(site_path)
    preds = predict.at_site(groups, site, nodes)
    win = predict.winners(preds)
    cross = predict.crossovers(groups, site, max(nodes))
    sens = predict.sensitivity(groups, site, nodes)
    if as_json:
        jsonout.emit("model.predict", {
            "site": site.name,
            "assumed": {k: asdict(a) for k, a in site.assumed.items()},
            "predictions": [asdict(p) for p in preds],
            "winners": [{"workload": w, "nodes": n, "method": p.method}
                        for (w, n), p in sorted(win.items())],
            "crossovers": [asdict(c) for c in cross],
            "sensitivity": {k: [{"value": v, "winners": [{"workload": w, "nodes": n, "method": m}
                                                          for (w, n), m in sorted(ws.items())]}
                                for v, ws in rows] for k, rows in sens.items()},
        })
        return
    for workload in sorted({g.workload for g in groups}):
        t = Table(title=f"{workload} at {site.name}: predicted seconds [90 % band]")
        t.add_column("method")
        for n in nodes:
            t.add_column(f"N={n}", justify="right")
        for method in sorted({p.method for p in preds if p.workload == workload}):
            cells = []
            for n in nodes:
                p = next(p for p in preds if (p.method, p.workload, p.nodes) == (method, workload, n))
                cell = f"{p.seconds:.1f} [{p.low:.1f}-{p.high:.1f}]"
                if not p.feasible:
                    cell += " no memory"
                elif win.get((workload, n)) is p:
                    cell = f"[bold green]{cell}[/]"
                cells.append(cell)
            t.add_row(method, *cells)
        console.print(t)
    for c in cross:
        console.print(f"{c.workload}: {c.winner} overtakes {c.loser} beyond {c.nodes - 1} nodes")
    for key, rows in sens.items():
        a = site.assumed[key]
        changes = {(w, n) for _, ws in rows for (w, n), m in ws.items()
                   if (w, n) in win and m != win[(w, n)].method}
        console.print(f"assumed {key} = {a.value:g} (range {a.low:g}-{a.high:g}): "
                      + ("the winner changes for " + ", ".join(f"{w}@N={n}" for w, n in
                                                              sorted(changes))
                         if changes else "no winner changes across the range"))


@model.command("validate")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
def validate_cmd(results: tuple[Path, ...], as_json: bool) -> None:
    """Leave-one-node-count-out and leave-one-network-out errors of the model on RESULTS."""
    from shoal.model import data, fit

    obs = data.load_all(results)
    rows: list[dict[str, Any]] = []
    for (m, w), errs in sorted(fit.leave_largest_n_out(obs).items()):
        rows.append({"test": "largest N held out", "held_out": str(max(o.nodes for o in obs
                     if (o.method, o.workload) == (m, w))), "method": m, "workload": w,
                     "median_abs_error": statistics.median(errs), "runs": len(errs)})
    for net, table in sorted(fit.leave_one_network_out(obs).items()):
        for (m, w), errs in sorted(table.items()):
            rows.append({"test": "network held out", "held_out": net, "method": m, "workload": w,
                         "median_abs_error": statistics.median(errs), "runs": len(errs)})
    unvalidated = ["metadata rate (the emulator's storage has no metadata server limit)",
                   "cores per node > 1 per emulated node (all nodes share the host's cores)"]
    if len({o.network for o in obs}) < 2:
        unvalidated.append("network change: the results hold one network profile")
    if as_json:
        jsonout.emit("model.validate", {"errors": rows, "unvalidated": unvalidated})
        return
    t = Table(title="model validation on " + ", ".join(map(str, results)))
    for col in ("test", "held out", "method", "workload", "median |error|", "runs"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["test"], r["held_out"], r["method"], r["workload"],
                  f"{100 * r['median_abs_error']:.0f} %", str(r["runs"]))
    console.print(t)
    if rows:
        overall = statistics.median(r["median_abs_error"] for r in rows)
        console.print(f"median over groups: {100 * overall:.0f} % (goal <= 20 %)")
    for u in unvalidated:
        console.print(f"unvalidated: {u}")
