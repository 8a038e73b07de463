"""A site's description (SITE.toml): nodes, cores, fabric, storage, memory, sbcast fan-out.

Each value is either a plain number (sourced: say where in a comment) or a table
``{ value = X, assumed = true, range = [LOW, HIGH] }`` for values nobody could source (a file
system's aggregate bandwidth, a metadata server's rate). `predict` sweeps every assumed value
across its range and shows where the winner changes. Units are in the key names: ``_gbit`` is
Gbit/s, ``_gbyte`` GB/s, ``_gib`` GiB.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from shoal.model.terms import Fabric

_KEYS = {
    "name": str,
    "nodes": int,
    "cores_per_node": float,
    "link_gbit": float,
    "storage_gbyte": float,
    "metadata_ops": float,
    "node_memory_gib": float,
    "sbcast_fanout": int,
    "bcast_fanout": int,
    "chunk_mib": float,
}
_REQUIRED = ("name", "nodes", "cores_per_node", "link_gbit", "storage_gbyte")


@dataclass(frozen=True)
class Assumed:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Site:
    name: str
    nodes: int
    cores_per_node: float
    link_gbit: float
    storage_gbyte: float
    metadata_ops: float = math.inf
    node_memory_gib: float = math.inf
    sbcast_fanout: int = 8
    bcast_fanout: int = 1
    chunk_mib: float = 4.0
    assumed: dict[str, Assumed] = field(default_factory=dict)

    def fabric(self) -> Fabric:
        return Fabric(link_bps=self.link_gbit * 1e9 / 8, storage_bps=self.storage_gbyte * 1e9,
                      metadata_ops=self.metadata_ops, sbcast_fanout=self.sbcast_fanout,
                      bcast_fanout=self.bcast_fanout, chunk_bytes=self.chunk_mib * 2**20)

    @property
    def node_memory_bytes(self) -> float:
        return self.node_memory_gib * 2**30

    def with_value(self, key: str, value: float) -> Site:
        cast = _KEYS[key]
        return replace(self, **{key: cast(value)})


def _err(path: Path, msg: str) -> Exception:
    from shoal.model.fit import ModelError

    return ModelError(f"{path}: {msg}",
                      hint="see examples/sites/*.toml for the keys and their units")


def load_site(path: Path) -> Site:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _err(path, "no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _err(path, f"not valid TOML: {exc}") from None
    table = data.get("site")
    if not isinstance(table, dict):
        raise _err(path, "needs a [site] table")
    values: dict[str, object] = {}
    assumed: dict[str, Assumed] = {}
    for key, raw in table.items():
        if key not in _KEYS:
            raise _err(path, f"unknown key site.{key} (known: {', '.join(_KEYS)})")
        cast = _KEYS[key]
        val = raw
        if isinstance(raw, dict):
            if set(raw) - {"value", "assumed", "range"} or "value" not in raw:
                raise _err(path, f"site.{key}: a table takes value, assumed and range")
            val = raw["value"]
            rng = raw.get("range", [val, val])
            if (not isinstance(rng, list) or len(rng) != 2
                    or not all(isinstance(x, int | float) and not isinstance(x, bool)
                               for x in rng)):
                raise _err(path, f"site.{key}.range must be [low, high]")
            if raw.get("assumed", False):
                assumed[key] = Assumed(float(val), float(min(rng)), float(max(rng)))
        if cast is str:
            if not isinstance(val, str):
                raise _err(path, f"site.{key} must be a string")
        elif (not isinstance(val, int | float) or isinstance(val, bool) or not val > 0
              or (cast is int and int(val) != val)):
            raise _err(path, f"site.{key} must be a positive {cast.__name__}, got {val!r}")
        values[key] = cast(val)
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise _err(path, f"missing site.{', site.'.join(missing)}")
    return Site(assumed=assumed, **values)  # type: ignore[arg-type]
