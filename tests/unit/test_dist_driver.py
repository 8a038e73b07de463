"""The driver's logic with a recorded Slurm: step order, failures named, cleanup, requests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import DistError
from shoal.runner import Completed, Runner, use_runner
from shoal.staging import driver

NODES = ["n1", "n2", "n3"]


class FakeSlurm(Runner):
    """Answers sbatch/scontrol/squeue/srun/sbcast/scancel like a 3-node cluster would."""

    def __init__(self, stage: Callable[[str], dict[str, Any] | None] | None = None) -> None:
        super().__init__()
        self.calls: list[list[str]] = []
        self.stage = stage or (lambda n: {"ok": True, "staged": "/tmp/shoal/7/img"})
        self.store: Path | None = None
        self.completing = 2

    def run(self, argv: Sequence[str], **kw: Any) -> Completed:
        self.calls.append(list(argv))
        a = list(argv)[1:] if argv[0] == "pre" else list(argv)
        out = ""
        if a[0] == "sbatch":
            out = "7\n"
        elif a[:2] == ["squeue", "-h"]:
            out = "CG\n" if self.completing > 0 else ""  # the Epilog runs, then the job is gone
            self.completing -= 1
        elif a[0] == "squeue":
            out = json.dumps({"jobs": [{"job_id": 7, "name": "shoal", "job_state": "RUNNING",
                                        "nodes": "n[1-3]"}]})
        elif a[0] == "srun" and "python3" in a:
            sub = a[a.index("--store") + 2]
            lines = []
            nodelist = next(x for x in a if x.startswith("--nodelist="))
            for n in nodelist.removeprefix("--nodelist=").split(","):
                rec = {"node": n, "phase": sub, "ok": True}
                if sub == "stage":
                    r = self.stage(n)
                    if r is None:
                        continue  # the node died: no record
                    rec |= r
                lines.append(json.dumps(rec))
            out = "\n".join(lines)
        elif a[0] == "srun":
            out = "hello\n"
        return Completed(a, 0, out, "", 0.01)


def env(tmp_path: Path) -> driver.Site:
    store = tmp_path / "store"
    (store / "img").mkdir(parents=True)
    # export files whose manifest vouches for them: the driver checks size and sha256 before
    # it stages a file (shoal.images.store.checked_export)
    files = {}
    for name in ("img.tar.gz", "img.sqfs"):
        (store / "img" / name).write_bytes(b"0123456789")
        files[name] = hashlib.sha256(b"0123456789").hexdigest()
    (store / "img" / "manifest.json").write_text(json.dumps(
        {"format_version": 1, "name": "img", "files": files,
         "exports": {"tar.gz": "img.tar.gz", "squashfs": "img.sqfs", "dir": "dir"},
         "sizes": {"img.tar.gz": 10, "img.sqfs": 10}, "bytes": 100, "tree_digest": "d",
         "file_count": 1, "inputs_hash": "h", "created": "now"}))
    return driver.Site(("pre",), store, "/pfs/store", "/pfs/store")


def strip(calls: list[list[str]]) -> list[list[str]]:
    return [c[1:] for c in calls]  # drop the Site prefix


def test_sbcast_order_and_records(tmp_path: Path) -> None:
    site = env(tmp_path)
    fake = FakeSlurm()
    alloc = driver.Allocation("7", NODES, owned=False)
    with use_runner(fake):
        res = driver.distribute(site, alloc, "sbcast", "img", fanout=2, compress=True)
    calls = strip(fake.calls)
    assert all(c[0] == "pre" for c in fake.calls)
    kinds = [c[0] if c[0] != "srun" else c[c.index("--store") + 2] for c in calls]
    assert kinds == ["check", "sbcast", "stage"]
    sb = calls[1]
    assert "--fanout=2" in sb and "--compress" in sb and "--jobid=7" in sb
    assert sb[-2:] == ["/pfs/store/img/img.tar.gz", "/tmp/shoal/7/img.tar.gz"]
    assert res.ok and sorted(res.records) == NODES and res.collective_seconds is not None
    assert res.staged_path() == "/tmp/shoal/7/img"
    lines = [json.loads(x) for x in res.json_lines()]
    assert [x["node"] for x in lines] == NODES and all(x["nodes"] == 3 for x in lines)


def test_failed_and_silent_nodes_are_named_and_others_cleaned(tmp_path: Path) -> None:
    site = env(tmp_path)

    def stage(n: str) -> dict[str, Any] | None:
        if n == "n2":
            return None
        if n == "n3":
            return {"ok": False, "error": "node-local storage too small"}
        return {"ok": True, "staged": "/x"}

    fake = FakeSlurm(stage)
    with use_runner(fake):
        res = driver.distribute(site, driver.Allocation("7", NODES, False), "untar", "img")
        with pytest.raises(DistError, match=r"failed on 2 of 3 nodes \(n2, n3\)"):
            driver.raise_if_failed(res)
    assert "no record" in res.failed["n2"] and "too small" in res.failed["n3"]
    cleanup = [c for c in fake.calls if "cleanup" in c]
    assert len(cleanup) == 1
    assert "--nodelist=n1,n3" in cleanup[0]  # the nodes that answered


def test_run_asks_the_prolog_in_the_job_comment(tmp_path: Path) -> None:
    site = env(tmp_path)
    fake = FakeSlurm()
    fake.store = site.store_local
    with use_runner(fake):
        ran = driver.run_in_image(site, "img", "squashfs-kernel", ["hostname"], nodes=3)
    calls = strip(fake.calls)
    sbatch = calls[0]
    assert sbatch[0] == "sbatch" and "--nodes=3" in sbatch
    # the request is the job record's (slurmctld keeps it), not a file a user could write
    assert "--comment=shoal-stage=squashfs-kernel:img" in sbatch
    assert not (site.store_local / ".shoal/requests").exists()
    # released, and waited for until the Epilog undid the Prolog's mount
    assert calls[-4] == ["scancel", "7"] and calls[-1][:2] == ["squeue", "-h"]
    run = next(c for c in calls if "ch-run" in c)
    assert run[run.index("ch-run") + 1:] == ["/tmp/shoal/7/img", "--", "hostname"]
    assert ran.stdout == "hello\n" and sorted(ran.cleanup) == NODES


def test_run_without_comment_for_copying_methods(tmp_path: Path) -> None:
    site = env(tmp_path)
    fake = FakeSlurm()
    fake.store = site.store_local
    with use_runner(fake):
        driver.run_in_image(site, "img", "untar", ["true"], nodes=3)
    assert not any(a.startswith("--comment") for a in strip(fake.calls)[0])



def test_unknown_image_lists_known(tmp_path: Path) -> None:
    site = env(tmp_path)
    with use_runner(FakeSlurm()), pytest.raises(DistError, match="not in the store") as ei:
        driver.distribute(site, driver.Allocation("7", NODES, False), "untar", "nope")
    assert ei.value.hint is not None and "img" in ei.value.hint


def test_parse_records_ignores_noise() -> None:
    text = 'srun: warning\n{"node": "a", "ok": true}\nnot json {\n{"x": 1}\n'
    assert driver.parse_records(text) == {"a": {"node": "a", "ok": True}}


def test_current_allocation_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = driver.Site((), tmp_path, str(tmp_path), str(tmp_path))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    with use_runner(FakeSlurm()):
        alloc = driver.current_allocation(site)
    assert alloc is not None and alloc.nodes == NODES and not alloc.owned



def test_parse_records_joins_lines_srun_cut() -> None:
    """`srun --label` relays 1 KiB messages; longer records arrive cut, interleaved by task."""
    import json

    from shoal.staging.jobstep import SRUN_IO_MSG, unlabel

    recs = {n: json.dumps({"node": n, "ok": True, "pad": n * 1500}) for n in ("a", "b")}
    pieces = {n: [r[i:i + SRUN_IO_MSG] for i in range(0, len(r), SRUN_IO_MSG)]
              for n, r in recs.items()}
    assert all(len(p) == 2 for p in pieces.values())
    text = "\n".join([f" 0: {pieces['a'][0]}", f" 1: {pieces['b'][0]}", "srun: noise",
                      f" 1: {pieces['b'][1]}", f" 0: {pieces['a'][1]}", "10: {\"x\": 1}"]) + "\n"
    got = driver.parse_records(text)
    assert {n: json.dumps(r) for n, r in got.items()} == recs
    assert unlabel("plain line\n 3: short\n") == ["plain line", "short"]
