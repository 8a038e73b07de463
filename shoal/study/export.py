"""The compact per-node export of a study: every figure a scale model needs, one row per node-run.

``shoal study export DIR [--format csv|jsonl] [--out FILE]`` writes, from the database (never the
other way round), one row per node of every completed run (warm-up runs excluded): the factors
(method, workload, image, N), the fabric it ran on (network profile, link and storage bandwidth,
storage kind, host cores, nodes x CPUs), the run's one clock and phase times, the node's CPU
seconds and memory peak per phase (its cgroup), its bytes (interface and storage connection), the
run's storage-host bytes and utilisations, the bound, and how the run was made (concurrency,
cache, seed). Columns are fixed (``COLUMNS``), so files of different studies line up.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shoal.study.db import StudyDB

EXPORT_FORMAT = 1
PHASES = ("collective", "stage", "mount", "workload", "cleanup")
COLUMNS: tuple[str, ...] = (
    "format", "study", "experiment", "run_id", "rep", "job_id", "method", "workload", "image",
    "nodes", "node", "ok", "network_profile", "link_mbit", "storage_kind", "storage_mbit",
    "host_cores", "cluster_nodes", "cpus_per_node", "memory_mb_per_node", "cache", "concurrency",
    "seed", "time_to_solution",
    *(f"phase_{p}_s" for p in PHASES),
    "stage_seconds", "workload_seconds", "collective_seconds",
    "cpu_s", *(f"cpu_{p}_s" for p in PHASES),
    "memory_peak_bytes", *(f"mem_peak_{p}_bytes" for p in PHASES),
    "peak_bytes", "net_rx_bytes", "net_tx_bytes", "bytes_from_storage", "broadcast_bytes",
    "storage_served_bytes", "storage_received_bytes", "cluster_cpu_s", "host_cpu_util",
    "util_cpu", "util_link", "util_storage", "bound", "fom_json",
)


def rows(db: StudyDB) -> Iterable[dict[str, Any]]:
    study = db.study()
    envs = db.environments()
    env = envs[-1] if envs else {}
    extra_env = json.loads(env.get("extra_json") or "{}") if env else {}
    net = json.loads(env.get("network_params_json") or "{}") if env else {}
    for r in db.results():
        rec = r.record
        x = dict(rec.extra)
        row: dict[str, Any] = {c: None for c in COLUMNS}
        row.update({
            "format": EXPORT_FORMAT, "study": study[1] if study else None,
            "experiment": r.experiment_id, "run_id": r.run_id, "rep": r.rep, "job_id": r.job_id,
            "method": r.method, "workload": r.workload, "image": r.image, "nodes": r.nodes,
            "node": rec.node, "ok": rec.ok,
            "network_profile": env.get("network_profile") if env else None,
            "link_mbit": x.get("link_mbit", net.get("rate_mbit")),
            "storage_kind": x.get("storage_kind", extra_env.get("shared_storage")),
            "storage_mbit": x.get("storage_mbit", net.get("storage_mbit")),
            "cluster_nodes": extra_env.get("cluster_nodes"),
            "cpus_per_node": extra_env.get("cpus_per_node"),
            "memory_mb_per_node": extra_env.get("memory_mb_per_node"),
            "seed": extra_env.get("seed"),
            "time_to_solution": rec.total_seconds, "stage_seconds": rec.stage_seconds,
            "workload_seconds": rec.workload_seconds, "peak_bytes": rec.peak_bytes,
            "bytes_from_storage": rec.bytes_from_storage,
            "fom_json": json.dumps(dict(rec.fom), sort_keys=True),
        })
        for c in COLUMNS:
            if row[c] is None and c in x:
                row[c] = x[c]
        if row["net_rx_bytes"] is None:
            row["net_rx_bytes"] = rec.bytes_net_rx
        yield row


def export(out_dir: str | Path, fmt: str = "csv") -> str:
    """The export of the study in OUT_DIR as text (csv or jsonl)."""
    with StudyDB.in_dir(out_dir, create=False) as db:
        data = list(rows(db))
    if fmt == "jsonl":
        return "".join(json.dumps(r, sort_keys=True) + "\n" for r in data)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in data:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()
