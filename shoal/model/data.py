"""Observations from a study: its database (study.sqlite) or its compact per-node export (JSONL).

One observation per completed run (warm-up runs excluded): the run's time-to-solution (the one
clock), and per node, averaged over the run's nodes, CPU seconds per phase and bytes received.
The fabric the run saw (link and storage bandwidth, host cores) is in every record, written by
the job step from /etc/slurm/shoal-fabric.json; bind storage and unshaped links have no finite
bandwidth and appear as infinite (their shared terms are then zero, as they were in the run).
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shoal.model.fit import ModelError
from shoal.model.terms import PHASES, Fabric, Observation

# workloads whose work the node can spread over its cores (one rank per core)
_PARALLEL_WORKLOADS = ("lammps", "pynamic", "mpihello")


def _bps(mbit: Any) -> float:
    return float(mbit) * 1e6 / 8 if isinstance(mbit, int | float) and mbit > 0 else math.inf


def _median(values: Iterable[Any]) -> float:
    vals = [float(v) for v in values if isinstance(v, int | float)]
    return float(statistics.median(vals)) if vals else 0.0


def observations(records: Iterable[Mapping[str, Any]]) -> list[Observation]:
    """Group per-node records by run and reduce each run to one Observation."""
    runs: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        key = (r.get("study"), r.get("run_id")) if r.get("run_id") is not None else \
            (r.get("experiment"), r.get("rep"), r.get("job_start"))
        runs[key].append(r)
    out = []
    for recs in runs.values():
        first = recs[0]
        tts = first.get("time_to_solution")
        if not isinstance(tts, int | float) or tts <= 0:
            continue  # a run from before the one clock, or one that did not finish
        storage = first.get("storage_kind")
        fabric = Fabric(
            link_bps=_bps(first.get("link_mbit")),
            storage_bps=math.inf if storage == "bind" else _bps(first.get("storage_mbit")),
            sbcast_fanout=int(first.get("fanout") or 8),
        )
        received = _median(r.get("net_rx_bytes") for r in recs)
        workload = str(first.get("workload"))
        parallel = float(first.get("host_cores") or 2) if workload in _PARALLEL_WORKLOADS else 1.0
        out.append(Observation(
            method=str(first.get("method")),
            workload=workload,
            nodes=len(recs),
            fabric=fabric,
            image_bytes=received,
            read_bytes=received,
            files_read=0.0,  # not counted by the job step: the metadata term stays unvalidated
            local_bytes=_median(r.get("memory_peak_bytes") for r in recs),
            cpu={ph: _median(r.get(f"cpu_{ph}_s") for r in recs) for ph in PHASES},
            parallelism={"workload": parallel},
            seconds=float(tts),
            host_cores=float(first.get("host_cores") or 2),
            network=f"link={first.get('link_mbit')}Mbit storage={storage}:"
                    f"{first.get('storage_mbit')}Mbit",
        ))
    return out


def _db_records(db: Path) -> list[dict[str, Any]]:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute(
                "SELECT r.id, r.rep, e.id, e.method, e.workload, n.node, n.extra_json "
                "FROM node_record n JOIN run r ON n.run_id = r.id "
                "JOIN experiment e ON r.experiment_id = e.id "
                "WHERE r.state = 'COMPLETED' AND r.rep >= 0 AND n.ok = 1").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise ModelError(f"{db}: cannot read the study database ({exc})",
                         hint="is this a shoal study directory?") from None
    out = []
    for run_id, rep, exp, method, workload, node, extra in rows:
        rec = json.loads(extra or "{}")
        rec.update(run_id=run_id, rep=rep, experiment=exp, method=method, workload=workload,
                   node=node)
        out.append(rec)
    return out


def _cell(text: str) -> Any:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _csv_records(path: Path) -> list[dict[str, Any]]:
    """`shoal study export`'s per-node CSV (one row per node and run, numbers as text)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ModelError(f"{path}: not a study export ({exc})") from None
    if rows and not {"method", "workload", "time_to_solution"} <= set(rows[0]):
        raise ModelError(f"{path}: not a study export (no method/workload/time_to_solution)",
                         hint="make one with: shoal study export DIR")
    keep_text = {"study", "experiment", "method", "workload", "node", "storage_kind"}
    return [{k: (v if k in keep_text else _cell(v)) for k, v in r.items()} for r in rows
            if r.get("ok") in ("True", "1", "true")]


def load_all(sources: Iterable[Path]) -> list[Observation]:
    return [o for src in sources for o in load(src)]


def load(source: Path) -> list[Observation]:
    """A study directory (its study.sqlite) or an export file of JSON lines."""
    if source.is_dir():
        db = source / "study.sqlite"
        if not db.is_file():
            raise ModelError(f"{source}: no study.sqlite here",
                             hint="give a study's results directory (shoal study run SPEC --out DIR)")
        records = _db_records(db)
    elif source.is_file() and source.suffix == ".csv":
        records = _csv_records(source)
    elif source.is_file():
        try:
            records = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{source}: not a JSON-lines export ({exc})") from None
    else:
        raise ModelError(f"{source}: no such study directory or export file")
    obs = observations(records)
    if not obs:
        raise ModelError(f"{source}: no completed run with a time-to-solution",
                         hint="runs recorded before per-phase accounting cannot be fitted")
    return obs
