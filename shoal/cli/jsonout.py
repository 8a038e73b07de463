"""Machine output of `--json`: one JSON document per command on stdout, with a documented schema.

Every document is an object with ``format`` (this module's FORMAT) and ``kind`` (the command, e.g.
``study.status``) plus the fields of SCHEMAS[kind]. The schemas are written in a small subset of
JSON Schema (type, properties, required, items, additionalProperties, enum) and checked before a
document is printed, so a command cannot drift from its documentation. docs/JSON.md is generated
from them: ``python -m shoal.cli.jsonout > docs/JSON.md`` (a test checks it is up to date).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

FORMAT = 1

Schema = dict[str, Any]

_STR: Schema = {"type": "string"}
_INT: Schema = {"type": "integer"}
_NUM: Schema = {"type": "number"}
_BOOL: Schema = {"type": "boolean"}
_OPT_NUM: Schema = {"type": ["number", "null"]}
_OPT_STR: Schema = {"type": ["string", "null"]}


def _obj(props: dict[str, Schema], *, required: list[str] | None = None,
         extra: bool = True, desc: str = "") -> Schema:
    s: Schema = {"type": "object", "properties": props,
                 "required": list(props) if required is None else required}
    if not extra:
        s["additionalProperties"] = False
    if desc:
        s["description"] = desc
    return s


def _arr(items: Schema, desc: str = "") -> Schema:
    s: Schema = {"type": "array", "items": items}
    if desc:
        s["description"] = desc
    return s


def _d(schema: Schema, desc: str) -> Schema:
    return {**schema, "description": desc}


_MANIFEST = _obj({
    "format_version": _INT, "name": _STR, "files": {"type": "object"},
    "sizes": {"type": "object"}, "exports": _d({"type": "object"}, "format -> file name"),
    "tree_digest": _STR, "bytes": _d(_INT, "bytes of the unpacked tree"), "file_count": _INT,
    "inputs_hash": _STR, "created": _STR,
}, desc="the image's manifest in the store (manifest.json)")

_NODE_RECORD = _obj({
    "node": _STR, "ok": _BOOL, "method": _STR, "image": _STR, "job": _STR,
    "seconds": _d(_OPT_NUM, "staging time on the node"),
    "staged": _d(_OPT_STR, "where the image is on the node"),
    "error": _d(_OPT_STR, "why the node failed (when ok is false)"),
}, required=["node", "ok", "method", "image", "job"], desc="one node's staging record")

_DIST = _obj({
    "job": _STR, "method": _STR, "image": _STR, "ok": _BOOL,
    "seconds": _d(_NUM, "submit-side wall time, first step to last record"),
    "collective_seconds": _d(_OPT_NUM, "the sbcast step, for methods that have one"),
    "nodes": _arr(_NODE_RECORD),
})

SCHEMAS: dict[str, Schema] = {
    "cluster.up": _obj({
        "name": _STR, "subnet": _STR, "bridge": _STR, "network": _STR, "storage": _STR,
        "layer1_image": _STR, "boot_seconds": _NUM,
        "hosts": _arr(_obj({"host": _STR, "address": _STR, "role": _STR})),
    }),
    "cluster.down": _obj({"name": _STR, "removed": _BOOL}),
    "cluster.list": _obj({"clusters": _arr(_obj({
        "name": _STR, "nodes": _INT, "subnet": _STR, "network": _STR, "phase": _STR,
        "boot_seconds": _NUM}))}),
    "cluster.status": _obj({
        "name": _STR, "network": {"type": "object"},
        "nodes": _arr(_obj({"name": _STR, "slurm_state": _STR, "running": _BOOL,
                            "rss_bytes": _INT, "processes": _INT, "layer1": _STR,
                            "programs": _d({"type": "object"}, "program -> supervisord state")})),
    }),
    "image.list": _obj({"store": _STR, "images": _arr(_MANIFEST)}),
    "image.import": _obj({"store": _STR, "source": _STR,
                          "source_format": _d({"type": "string", "enum": [
                              "oci", "docker-archive", "tar", "dir", "squashfs"]},
                              "what the source was recognised as"),
                          "image": _MANIFEST}),
    "image.export": _obj({"store": _STR, "image": _MANIFEST}),
    "image.verify": _obj({"name": _STR, "ok": _BOOL,
                          "problems": _arr(_obj({"what": _STR, "path": _STR, "detail": _STR}))}),
    "dist": _DIST,
    "run": _obj({
        "returncode": _d(_INT, "the command's exit status (shoal exits with it too)"),
        "command_seconds": _NUM, "stdout": _STR, "stderr": _STR,
        "staging": _DIST,
        "cleanup": _arr(_obj({"node": _STR, "ok": _BOOL}, required=["node"])),
    }),
    "study.run": _obj({
        "name": _STR, "out": _STR, "cluster": _OPT_STR,
        "cluster_booted": _d(_BOOL, "shoal booted the spec's cluster for this run"),
        "cluster_kept": _d(_BOOL, "... and left it up (--keep-cluster)"),
        "completed": _INT, "failed": _INT, "skipped": _INT, "reattached": _INT,
        "states": _d({"type": "object"}, "run state -> count, whole database"),
    }),
    "study.status": _obj({
        "name": _STR, "out": _STR, "states": {"type": "object"},
        "experiments": _arr(_obj({"id": _STR, "method": _STR, "workload": _STR, "image": _STR,
                                  "nodes": _INT, "done": _INT, "failed": _INT, "active": _INT})),
        "failed_runs": _arr(_obj({"experiment": _STR, "rep": _INT, "attempt": _INT,
                                  "job": {"type": ["integer", "null"]}, "reason": _STR})),
    }),
    "study.report": _obj({
        "markdown": _STR, "html": _STR, "plots": _arr(_STR),
        "recommendation": _d(_OPT_STR, "one line, only when the data support it"),
        "answers": _arr(_obj({"number": _INT, "question": _STR, "verdict": _STR,
                              "cites": _arr(_STR)})),
    }),
    "model.fit": _obj({"model": _d(_STR, "where the model was written"), "groups": _arr(_obj({
        "method": _STR, "workload": _STR, "eta": _NUM, "l0": _NUM, "l1": _NUM, "n_obs": _INT,
        "shared_identified": _BOOL, "rel_rmse": _NUM}, required=["method", "workload", "n_obs"]))}),
    "model.predict": _obj({
        "site": _STR, "assumed": {"type": "object"},
        "predictions": _arr(_obj({"method": _STR, "workload": _STR, "nodes": _INT,
                                  "seconds": _NUM, "low": _NUM, "high": _NUM},
                                 required=["method", "workload", "nodes", "seconds"])),
        "winners": _arr(_obj({"workload": _STR, "nodes": _INT, "method": _STR})),
        "crossovers": _arr({"type": "object"}), "sensitivity": {"type": "object"}}),
    "model.validate": _obj({
        "errors": _arr(_obj({"test": _STR, "held_out": _STR, "method": _STR, "workload": _STR,
                             "median_abs_error": _NUM, "runs": _INT})),
        "unvalidated": _arr(_STR)}),
    "state.show": _obj({
        "summary": _d({"type": "object"}, "nodes, unavailable, max_unavailable, frozen, capabilities"),
        "nodes": _arr(_obj({
            "name": _STR, "phase": _STR, "reason": _STR, "health": _STR, "health_reason": _STR,
            "frozen": _BOOL, "cfg": _d({"type": "object"}, "desired: image, power, frozen"),
            "dsc": _d({"type": "object"}, "discovered: alive, image, programs, slurm_*, heartbeat"),
            "transition": _d({"type": ["object", "null"]}, "name, started, deadline, ctx")}),
            "GET /nodes of the state API (docs/STATE.md, /openapi.json)"),
    }),
    "state.events": _obj({"events": _arr(_obj({
        "id": _INT, "time": _NUM, "node": _d(_STR, "'' for cluster-wide events"),
        "kind": _d(_STR, "phase, transition, slurm, slurm_update, process, alive, hello, ..."),
        "data": {"type": "object"}}))}),
    "study.compare": _obj({"a": _STR, "b": _STR, "rows": _arr(_obj({
        "method": _STR, "workload": _STR, "image": _STR, "nodes": _INT, "metric": _STR,
        "a": _d({"type": ["object", "null"]}, "median, low, high (seconds)"),
        "b": {"type": ["object", "null"]}, "ratio": _OPT_NUM, "verdict": _STR}))}),
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,),
    "number": (int, float), "boolean": (bool,), "null": (type(None),),
}


def problems(doc: Any, schema: Schema, at: str = "$") -> list[str]:
    """Where DOC does not match SCHEMA (empty: it matches)."""
    out: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        ok = any(isinstance(doc, _TYPES[t]) and not (t in ("integer", "number")
                                                      and isinstance(doc, bool)) for t in names)
        if not ok:
            return [f"{at}: {type(doc).__name__} is not {'/'.join(names)}"]
    if "enum" in schema and doc not in schema["enum"]:
        out.append(f"{at}: {doc!r} is not one of {schema['enum']}")
    if isinstance(doc, dict):
        props: dict[str, Schema] = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in doc:
                out.append(f"{at}: missing {key!r}")
        for key, value in doc.items():
            if key in props:
                out.extend(problems(value, props[key], f"{at}.{key}"))
            elif schema.get("additionalProperties") is False:
                out.append(f"{at}: unexpected {key!r}")
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            out.extend(problems(item, schema["items"], f"{at}[{i}]"))
    return out


def document(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The full document for KIND; raises AssertionError (a bug) if BODY breaks the schema."""
    wrong = problems(body, SCHEMAS[kind])
    if wrong:
        raise AssertionError(f"--json output of {kind} breaks its schema: {'; '.join(wrong[:5])}")
    return {"format": FORMAT, "kind": kind, **body}


def emit(kind: str, body: dict[str, Any]) -> None:
    """Print the document of KIND to stdout (and nothing else goes there in --json mode)."""
    click.echo(json.dumps(document(kind, body), indent=1, sort_keys=True, default=str))


def markdown() -> str:
    """docs/JSON.md: the convention and every schema."""
    lines = [
        "# shoal --json output",
        "",
        "Generated by `python -m shoal.cli.jsonout > docs/JSON.md` from `shoal/cli/jsonout.py`;",
        "a unit test fails when this file and the code disagree.",
        "",
        "Every command that a script would want to read takes `--json`: it then prints ONE JSON",
        "document to stdout and nothing else there (tables, progress and messages go to stderr).",
        "Errors still print `error: ...` on stderr and exit non-zero, with no document; a command",
        "whose answer is a failure (`image verify` finding problems, `run` whose command exits",
        "non-zero) prints its document first, then exits non-zero.",
        f"Each document is an object with `\"format\": {FORMAT}` and `\"kind\"` (below), plus the",
        "fields listed. Fields marked required are always present; more fields may be added",
        "without changing `format` (readers ignore what they do not know).",
        "",
    ]
    for kind, schema in SCHEMAS.items():
        cmd = "shoal " + kind.replace(".", " ")
        lines += [f"## `{kind}` (`{cmd} --json`)", "", "| field | type | required | meaning |",
                  "|---|---|---|---|"]
        lines += _rows(schema, "")
        lines.append("")
    return "\n".join(lines)


def _type(s: Schema) -> str:
    t = s.get("type", "any")
    name = "/".join(t) if isinstance(t, list) else str(t)
    if name == "array" and "items" in s:
        name = f"array of {_type(s['items'])}"
    if "enum" in s:
        name += " (" + ", ".join(map(str, s["enum"])) + ")"
    return name


def _rows(schema: Schema, prefix: str) -> list[str]:
    rows: list[str] = []
    req = set(schema.get("required", []))
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        rows.append(f"| `{path}` | {_type(sub)} | {'yes' if key in req else 'no'} | "
                    f"{sub.get('description', '')} |")
        inner = sub["items"] if sub.get("type") == "array" and "items" in sub else sub
        if inner.get("properties"):
            rows += _rows(inner, f"{path}{'[]' if inner is not sub else ''}.")
    return rows


if __name__ == "__main__":
    sys.stdout.write(markdown() + "\n")
