"""model.json: the fitted groups, versioned, written atomically."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shoal.model.fit import Group, ModelError
from shoal.model.terms import Fabric, Observation, Params

FORMAT = 1


def _obs_dict(o: Observation) -> dict[str, Any]:
    d = asdict(o)
    d["fabric"] = {k: (None if isinstance(v, float) and math.isinf(v) else v)
                   for k, v in d["fabric"].items()}
    return d


def _obs_from(d: dict[str, Any]) -> Observation:
    fab: dict[str, Any] = {k: (math.inf if v is None else v) for k, v in d["fabric"].items()}
    return Observation(**{**d, "fabric": Fabric(**fab)})


def save(groups: list[Group], path: Path, *, source: str) -> None:
    doc = {
        "format": FORMAT,
        "source": source,
        "groups": [
            {
                "method": g.method,
                "workload": g.workload,
                "params": asdict(g.params),
                "draws": [asdict(p) for p in g.draws],
                "template": _obs_dict(g.template),
                "n_obs": g.n_obs,
                "shared_identified": g.shared_identified,
                "rel_rmse": g.rel_rmse,
            }
            for g in groups
        ],
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def load(path: Path) -> list[Group]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model",
                         hint="make one with: shoal model fit RESULTS_DIR --out model.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a model file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(f"{path}: model format {doc.get('format') if isinstance(doc, dict) else '?'}"
                         f" is not {FORMAT}", hint="fit the model again with this shoal")
    try:
        return [
            Group(g["method"], g["workload"], Params(**g["params"]),
                  tuple(Params(**p) for p in g["draws"]), _obs_from(g["template"]),
                  int(g["n_obs"]), bool(g["shared_identified"]), float(g["rel_rmse"]))
            for g in doc["groups"]
        ]
    except (KeyError, TypeError) as exc:
        raise ModelError(f"{path}: damaged model ({exc})", hint="fit the model again") from None
