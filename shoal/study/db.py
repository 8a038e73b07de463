"""The results database of one study directory (SQLite, versioned schema).

Tables: meta (schema version, creator), study, experiment, run (one row per attempt of one
repetition of one experiment, with the Slurm job id, state, reason and times), node_record (the
per-node records of a run) and environment (Slurm version, kernel, network profile, image
digests, shoal version, git commit; one row per `study run` invocation).

Every change that belongs together is one transaction (``StudyDB.transaction``): a run's final
state and its node records land together or not at all, so Ctrl-C never leaves half rows.
Version: ``PRAGMA user_version`` and meta.schema_version both hold ``SCHEMA_VERSION``; a database
from a newer shoal is refused rather than misread.

Run states (``RunState``): SUBMITTING -> SUBMITTED -> PENDING -> RUNNING -> COMPLETED | FAILED,
and INTERRUPTED when the harness cancelled the job on Ctrl-C (such runs are simply run again).
"""

from __future__ import annotations

import contextlib
import enum
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal import __version__
from shoal.errors import StudyError
from shoal.study.jobscript import NodeRecord
from shoal.study.matrix import Experiment, RunKey
from shoal.study.spec import StudySpec

SCHEMA_VERSION = 1
DB_NAME = "study.sqlite"


class RunState(enum.StrEnum):
    SUBMITTING = "SUBMITTING"  # row written, sbatch not yet answered
    SUBMITTED = "SUBMITTED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"

    @property
    def active(self) -> bool:
        return self in (RunState.SUBMITTING, RunState.SUBMITTED, RunState.PENDING,
                        RunState.RUNNING)


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE study (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec_path TEXT NOT NULL,
    spec_text TEXT NOT NULL,
    spec_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE experiment (
    id TEXT PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES study(id),
    image TEXT NOT NULL,
    method TEXT NOT NULL,
    workload TEXT NOT NULL,
    nodes INTEGER NOT NULL,
    factors_json TEXT NOT NULL
);
CREATE TABLE run (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id TEXT NOT NULL REFERENCES experiment(id),
    rep INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    job_id INTEGER,
    job_state TEXT,
    reason TEXT,
    exit_code INTEGER,
    node_list TEXT,
    submit_time REAL,
    start_time REAL,
    end_time REAL,
    collected_at REAL,
    script_path TEXT,
    output_path TEXT,
    UNIQUE (experiment_id, rep, attempt)
);
CREATE INDEX run_key ON run (experiment_id, rep);
CREATE TABLE node_record (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES run(id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT,
    method TEXT,
    image_digest TEXT,
    stage_start REAL,
    stage_end REAL,
    stage_seconds REAL,
    bytes_from_storage INTEGER,
    bytes_net_rx INTEGER,
    peak_bytes INTEGER,
    workload TEXT,
    workload_seconds REAL,
    total_seconds REAL,
    fom_json TEXT NOT NULL,
    extra_json TEXT NOT NULL,
    UNIQUE (run_id, node)
);
CREATE TABLE environment (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_id INTEGER NOT NULL REFERENCES study(id),
    recorded_at REAL NOT NULL,
    slurm_version TEXT,
    kernel TEXT,
    hostname TEXT,
    cluster_kind TEXT,
    cluster_name TEXT,
    network_profile TEXT,
    network_params_json TEXT NOT NULL,
    image_digests_json TEXT NOT NULL,
    shoal_version TEXT NOT NULL,
    git_commit TEXT,
    extra_json TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class RunRow:
    id: int
    experiment_id: str
    rep: int
    attempt: int
    state: RunState
    job_id: int | None
    job_state: str | None
    reason: str | None
    exit_code: int | None
    node_list: str | None
    submit_time: float | None
    start_time: float | None
    end_time: float | None
    script_path: str | None
    output_path: str | None


@dataclass(frozen=True)
class Environment:
    slurm_version: str | None = None
    kernel: str | None = None
    hostname: str | None = None
    cluster_kind: str | None = None
    cluster_name: str | None = None
    network_profile: str | None = None
    network_params: dict[str, Any] | None = None
    image_digests: dict[str, str] | None = None
    shoal_version: str = __version__
    git_commit: str | None = None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class ResultRow:
    """One node record joined with its run and experiment (what the report works from)."""

    experiment_id: str
    image: str
    method: str
    workload: str
    nodes: int
    rep: int
    run_id: int
    job_id: int | None
    record: NodeRecord


_RUN_COLS = ("id, experiment_id, rep, attempt, state, job_id, job_state, reason, exit_code, "
             "node_list, submit_time, start_time, end_time, script_path, output_path")


def _run_row(r: Sequence[Any]) -> RunRow:
    return RunRow(r[0], r[1], r[2], r[3], RunState(r[4]), *r[5:])


class StudyDB:
    """A study directory's database. Use as a context manager; writes go through transaction()."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise StudyError(f"no study database at {self.path}",
                             "give the results directory of a `shoal study run`")
        existed = self.path.exists()
        if existed and self.path.stat().st_size == 0:
            # SQLite would take it for a new, empty database and write a fresh schema into it:
            # results would silently vanish (a crash or a full disk truncated the real one)
            raise StudyError(f"{self.path} is empty (0 bytes), not a study database",
                             "restore it from a copy, or remove it to start the study afresh")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA journal_mode = WAL")
            if existed:
                self._check_pages()
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(AttributeError, sqlite3.Error):
                self.conn.close()
            raise StudyError(f"cannot open study database {self.path}: {exc}",
                             "restore it from a copy, or use another results directory") from None

    @classmethod
    def in_dir(cls, out_dir: str | Path, *, create: bool = True) -> StudyDB:
        return cls(Path(out_dir) / DB_NAME, create=create)

    def __enter__(self) -> StudyDB:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        self.close()
        if isinstance(exc, sqlite3.DatabaseError):
            # damage quick_check did not see at open (or that appeared since): one line, not a
            # traceback from the middle of a query
            raise StudyError(f"study database {self.path} is damaged: {exc}",
                             "restore it from a copy, or use another results directory") from None

    def _check_pages(self) -> None:
        # quick_check reads every page (cheap for a study's database): damaged pages are named
        # here instead of failing some query in the middle of a report
        problems = [str(r[0]) for r in self.conn.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            raise StudyError(f"study database {self.path} is damaged: {'; '.join(problems)}"[:400],
                             "restore it from a copy, or use another results directory")

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StudyError(
                f"{self.path} has schema version {version}; this shoal reads up to "
                f"{SCHEMA_VERSION}", "use the shoal version that wrote it")
        tables = self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version == 0 and tables == 0:
            # one script = one transaction (executescript would commit an open one first)
            meta = [("schema_version", str(SCHEMA_VERSION)), ("created_by", f"shoal {__version__}"),
                    ("created_at", repr(time.time()))]
            inserts = "".join(
                f"INSERT INTO meta (key, value) VALUES ('{k}', '{v}');\n" for k, v in meta)
            self.conn.executescript(
                f"BEGIN;\n{_SCHEMA}\n{inserts}PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
            return
        raise StudyError(f"{self.path} is not a shoal study database (user_version {version})")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; any exception (KeyboardInterrupt too) rolls back."""
        if self.conn.in_transaction:
            yield self.conn  # nested use joins the outer transaction
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- study and experiments ----------------------------------------------------------------
    def ensure_study(self, spec: StudySpec, experiments: Iterable[Experiment]) -> int:
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT id, name FROM study").fetchall()
            if row and row[0][1] != spec.name:
                raise StudyError(
                    f"{self.path.parent} holds study {row[0][1]!r}, not {spec.name!r}",
                    "use another --out directory for a different study",
                )
            if row:
                study_id = int(row[0][0])
                c.execute("UPDATE study SET spec_path=?, spec_text=?, spec_sha256=?, updated_at=? "
                          "WHERE id=?", (spec.path, spec.text, spec.sha256, now, study_id))
            else:
                cur = c.execute(
                    "INSERT INTO study (name, spec_path, spec_text, spec_sha256, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (spec.name, spec.path, spec.text, spec.sha256, now, now))
                study_id = int(cur.lastrowid or 0)
            c.executemany(
                "INSERT OR IGNORE INTO experiment (id, study_id, image, method, workload, nodes, "
                "factors_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.id, study_id, e.image, e.method, e.workload, e.nodes,
                  json.dumps(e.factors, sort_keys=True)) for e in experiments])
        return study_id

    def study(self) -> tuple[int, str, str] | None:
        """(id, name, spec_text) of the study in this database, if any."""
        row = self.conn.execute("SELECT id, name, spec_text FROM study").fetchone()
        return (int(row[0]), str(row[1]), str(row[2])) if row else None

    def experiments(self) -> list[Experiment]:
        rows = self.conn.execute(
            "SELECT image, method, workload, nodes FROM experiment ORDER BY rowid").fetchall()
        return [Experiment(r[0], r[1], r[2], int(r[3])) for r in rows]

    def record_environment(self, study_id: int, env: Environment) -> None:
        with self.transaction() as c:
            c.execute(
                "INSERT INTO environment (study_id, recorded_at, slurm_version, kernel, hostname, "
                "cluster_kind, cluster_name, network_profile, network_params_json, "
                "image_digests_json, shoal_version, git_commit, extra_json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (study_id, time.time(), env.slurm_version, env.kernel, env.hostname,
                 env.cluster_kind, env.cluster_name, env.network_profile,
                 json.dumps(env.network_params or {}, sort_keys=True),
                 json.dumps(env.image_digests or {}, sort_keys=True), env.shoal_version,
                 env.git_commit, json.dumps(env.extra or {}, sort_keys=True)))

    def environments(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM environment ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    # -- runs ---------------------------------------------------------------------------------
    def begin_run(self, key: RunKey, *, script_path: str, output_path: str | None = None,
                  attempt: int | None = None) -> RunRow:
        """Write the SUBMITTING row of a new attempt (before sbatch, so no job goes unrecorded)."""
        with self.transaction() as c:
            if attempt is None:
                attempt = self.next_attempt(key)
            cur = c.execute(
                "INSERT INTO run (experiment_id, rep, attempt, state, script_path, output_path) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key.experiment.id, key.rep, attempt, RunState.SUBMITTING.value, script_path,
                 output_path))
            run_id = int(cur.lastrowid or 0)
        return self.run(run_id)

    def next_attempt(self, key: RunKey) -> int:
        row = self.conn.execute("SELECT max(attempt) FROM run WHERE experiment_id=? AND rep=?",
                                (key.experiment.id, key.rep)).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def update_run(self, run_id: int, **fields: Any) -> None:
        allowed = {"state", "job_id", "job_state", "reason", "exit_code", "node_list",
                   "submit_time", "start_time", "end_time", "output_path"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown run fields {sorted(bad)}")
        if not fields:
            return
        cols = ", ".join(f"{k}=?" for k in fields)
        vals = [v.value if isinstance(v, enum.Enum) else v for v in fields.values()]
        with self.transaction() as c:
            c.execute(f"UPDATE run SET {cols} WHERE id=?", (*vals, run_id))

    def finish_run(self, run_id: int, state: RunState, *, reason: str | None,
                   records: Sequence[NodeRecord] = (), **fields: Any) -> None:
        """The final state of a run and its node records, in one transaction."""
        with self.transaction() as c:
            self.update_run(run_id, state=state, reason=reason, **fields)
            c.execute("UPDATE run SET collected_at=? WHERE id=?", (time.time(), run_id))
            c.execute("DELETE FROM node_record WHERE run_id=?", (run_id,))
            c.executemany(
                "INSERT INTO node_record (run_id, node, ok, error, method, image_digest, "
                "stage_start, stage_end, stage_seconds, bytes_from_storage, bytes_net_rx, "
                "peak_bytes, workload, workload_seconds, total_seconds, fom_json, extra_json) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, r.node, int(r.ok), r.error, r.method, r.image_digest, r.stage_start,
                  r.stage_end, r.stage_seconds, r.bytes_from_storage, r.bytes_net_rx,
                  r.peak_bytes, r.workload, r.workload_seconds, r.total_seconds,
                  json.dumps(dict(r.fom), sort_keys=True),
                  json.dumps(dict(r.extra), sort_keys=True)) for r in records])

    def run(self, run_id: int) -> RunRow:
        row = self.conn.execute(f"SELECT {_RUN_COLS} FROM run WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise StudyError(f"no run {run_id} in {self.path}")
        return _run_row(row)

    def runs(self) -> list[RunRow]:
        rows = self.conn.execute(f"SELECT {_RUN_COLS} FROM run ORDER BY id").fetchall()
        return [_run_row(r) for r in rows]

    def latest_runs(self) -> dict[tuple[str, int], RunRow]:
        """The newest attempt of every (experiment, rep) that has one."""
        out: dict[tuple[str, int], RunRow] = {}
        for r in self.runs():
            out[(r.experiment_id, r.rep)] = r  # ids grow with attempts
        return out

    # -- resume queries -----------------------------------------------------------------------
    def completed_keys(self) -> set[tuple[str, int]]:
        rows = self.conn.execute("SELECT DISTINCT experiment_id, rep FROM run WHERE state=?",
                                 (RunState.COMPLETED.value,)).fetchall()
        return {(r[0], int(r[1])) for r in rows}

    def failed_keys(self) -> set[tuple[str, int]]:
        """Keys whose newest attempt failed and that never completed."""
        done = self.completed_keys()
        return {k for k, r in self.latest_runs().items()
                if r.state is RunState.FAILED and k not in done}

    def active_runs(self) -> list[RunRow]:
        """Newest attempts still submitting/queued/running (e.g. left by a killed harness)."""
        done = self.completed_keys()
        return [r for k, r in self.latest_runs().items() if r.state.active and k not in done]

    def state_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        done = self.completed_keys()
        for k, r in self.latest_runs().items():
            state = RunState.COMPLETED.value if k in done else r.state.value
            counts[state] = counts.get(state, 0) + 1
        return counts

    # -- results ------------------------------------------------------------------------------
    def results(self) -> list[ResultRow]:
        """Node records of completed runs, with their factors."""
        rows = self.conn.execute(
            "SELECT e.id, e.image, e.method, e.workload, e.nodes, r.rep, r.id, r.job_id, "
            "n.node, n.ok, n.error, n.method, n.image_digest, n.stage_start, n.stage_end, "
            "n.stage_seconds, n.bytes_from_storage, n.bytes_net_rx, n.peak_bytes, n.workload, "
            "n.workload_seconds, n.fom_json, n.extra_json "
            "FROM node_record n JOIN run r ON n.run_id = r.id "
            "JOIN experiment e ON r.experiment_id = e.id "
            # rep < 0: warm-up runs, discarded from every figure
            "WHERE r.state = ? AND r.rep >= 0 ORDER BY r.id, n.node",
            (RunState.COMPLETED.value,)).fetchall()
        out: list[ResultRow] = []
        for r in rows:
            rec = NodeRecord(
                node=r[8], ok=bool(r[9]), error=r[10], method=r[11], image_digest=r[12],
                stage_start=r[13], stage_end=r[14], stage_seconds=r[15],
                bytes_from_storage=r[16], bytes_net_rx=r[17], peak_bytes=r[18], workload=r[19],
                workload_seconds=r[20], fom=json.loads(r[21]), extra=json.loads(r[22]))
            out.append(ResultRow(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), int(r[6]), r[7],
                                 rec))
        return out

    def failed_runs(self) -> list[tuple[RunRow, Experiment]]:
        exps = {e.id: e for e in self.experiments()}
        return [(r, exps[r.experiment_id]) for k, r in self.latest_runs().items()
                if k in self.failed_keys()]
