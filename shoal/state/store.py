"""Persistence of the state service: one SQLite file in WAL mode.

What is stored and trusted after a restart: desired state, freeze flags, each node's phase and
the transition it is in (with its deadline, so a restart neither extends nor repeats it), and the
event log. What is stored but NOT trusted: the discovered state. It is kept for inspection only; a
restarted service starts from blank discovery and re-discovers (backend, Slurm, heartbeats).

Every write is its own transaction; WAL keeps readers (`shoal state show` on a copy, sqlite3
by hand) from blocking the service.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from shoal.errors import ShoalError
from shoal.state.model import Active, Desired, Discovered, NodeRecord, Phase

SCHEMA_VERSION = 1
EVENTS_KEPT = 20000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    desired TEXT NOT NULL,
    phase TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    active TEXT,
    discovered TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL
);
"""


class StateStoreError(ShoalError):
    pass


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise StateStoreError(
                    f"{path}: state database schema {row[0]}, this shoal reads {SCHEMA_VERSION}",
                    "move the old database away; desired state is then set again",
                )
        except sqlite3.Error as exc:
            raise StateStoreError(
                f"cannot open state database {path}: {exc}", "check the path and its permissions"
            ) from exc
        os.chmod(path, 0o600)

    def close(self) -> None:
        self.db.close()

    # -- cluster-wide settings -----------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (f"cfg.{key}",)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"cfg.{key}", json.dumps(value)))

    # -- nodes ---------------------------------------------------------------------------------
    def load_nodes(self, names: list[str]) -> dict[str, NodeRecord]:
        """Records for NAMES: stored desired state, phase and transition; discovery left blank."""
        out: dict[str, NodeRecord] = {n: NodeRecord(n) for n in names}
        for name, desired, phase, reason, active in self.db.execute(
            "SELECT name, desired, phase, reason, active FROM nodes"
        ):
            if name not in out:
                continue  # a node removed from the site's list
            rec = out[name]
            rec.desired = Desired(**json.loads(desired))
            try:
                rec.phase = Phase(phase)
            except ValueError:
                rec.phase = Phase.READY
            rec.reason = reason
            rec.active = Active(**json.loads(active)) if active else None
        return out

    def save_node(self, rec: NodeRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO nodes (name, desired, phase, reason, active, discovered, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                rec.name,
                json.dumps(rec.desired.as_dict()),
                str(rec.phase),
                rec.reason,
                json.dumps(rec.active.as_dict()) if rec.active else None,
                json.dumps(rec.discovered.as_dict()),
                time.time(),
            ),
        )

    def stored_discovery(self, name: str) -> Discovered | None:
        """The last discovery written before a restart (for inspection, never for decisions)."""
        row = self.db.execute("SELECT discovered FROM nodes WHERE name=?", (name,)).fetchone()
        if row is None or not row[0]:
            return None
        return Discovered(**json.loads(row[0]))

    # -- events --------------------------------------------------------------------------------
    def add_event(self, t: float, node: str, kind: str, data: dict[str, Any]) -> int:
        cur = self.db.execute(
            "INSERT INTO events (time, node, kind, data) VALUES (?, ?, ?, ?)",
            (t, node, kind, json.dumps(data, sort_keys=True)),
        )
        eid = int(cur.lastrowid or 0)
        if eid % 1000 == 0:
            self.db.execute("DELETE FROM events WHERE id <= ?", (eid - EVENTS_KEPT,))
        return eid

    def events_after(self, after: int, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, time, node, kind, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        ).fetchall()
        return [
            {"id": r[0], "time": r[1], "node": r[2], "kind": r[3], "data": json.loads(r[4])} for r in rows
        ]

    def last_event_id(self) -> int:
        row = self.db.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)
