"""The study spec: a TOML file validated into dataclasses before anything runs.

    [study]                      name, repetitions (5), timeout ("10m"; Slurm's time formats, a bare
                                 number is minutes), concurrency (1), partition, sbatch_args (the
                                 site's own sbatch options: ["--account=p", "--qos=q", ...]),
                                 privileged ("auto" | "prolog" | "direct": how kernel mounts get
                                 root; auto = direct when the harness is root, else the Prolog),
                                 seed (run order: shuffled within each repetition from it),
                                 cache ("cold": page caches dropped before every run, one run
                                 at a time; "warm": kept), warmup (true: one discarded run per
                                 experiment first), margin (0.10: the equivalence margin of
                                 "no difference" verdicts, a fraction of the reference time)
    [cluster]                    kind = "virtual" | "existing", name, nodes, network, storage
                                 (virtual: how /pfs is shared, "bind" or "sshfs"), store (the
                                 image store as the nodes see it; existing clusters only)
    [matrix]                     images, methods, workloads, node_counts, zip, exclude

``zip`` lists groups of factors that vary together instead of being crossed (their value lists
must have equal lengths); ``exclude`` lists partial assignments (``{method = "squashfs-kernel",
workload = "lammps"}``) whose matching experiments are dropped. Factor names: image, method,
workload, nodes.

Every error names the file, the line, the key and the bad value (``ConfigError``); the line is
found by scanning the file text for the key, since tomllib does not keep positions.
Defaults live in ``DEFAULTS`` and the name registries in ``DEFAULT_METHODS``/``DEFAULT_WORKLOADS``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal import limits, names
from shoal.errors import ConfigError
from shoal.slurm.timespec import parse_seconds
from shoal.workloads import WORKLOADS

# The methods shoal.staging will register; passed in explicitly once that registry exists.
DEFAULT_METHODS: tuple[str, ...] = (
    "untar", "sbcast", "squashfs-kernel", "squashfuse", "shared-dir", "sbcast-squashfs",
)
DEFAULT_WORKLOADS: tuple[str, ...] = tuple(WORKLOADS)  # the one registry: shoal.workloads
FACTORS: tuple[str, ...] = ("image", "method", "workload", "nodes")
CLUSTER_KINDS = ("virtual", "existing")

DEFAULTS: dict[str, Any] = {
    "study.repetitions": 5,
    "study.timeout": "10",  # per experiment (one job); Slurm time, a bare number is minutes
    "study.concurrency": 1,
    "study.partition": None,
    "study.privileged": "auto",
    "study.seed": 1,
    "study.cache": "cold",
    "study.warmup": True,
    "study.margin": 0.10,
    "cluster.kind": "virtual",
    "cluster.name": "shoal",
    "cluster.network": None,
    "cluster.store": None,
    "cluster.storage": None,
}
PRIVILEGED_MODES = ("auto", "prolog", "direct")
CACHE_MODES = ("cold", "warm")
# what the job scripts set themselves: a site's sbatch_args must not change them
SHOAL_SBATCH_OPTIONS = frozenset({
    "--nodes", "-N", "--ntasks-per-node", "--ntasks", "-n", "--exclusive", "--time", "-t",
    "--output", "-o", "--chdir", "-D", "--job-name", "-J", "--partition", "-p",
})

_ALLOWED: dict[str, tuple[str, ...]] = {
    "": ("study", "cluster", "matrix"),
    "study": ("name", "repetitions", "timeout", "concurrency", "partition", "description",
              "privileged", "sbatch_args", "seed", "cache", "warmup", "margin"),
    "cluster": ("kind", "name", "nodes", "network", "storage", "store"),
    "matrix": ("images", "methods", "workloads", "node_counts", "zip", "exclude", "repeat"),
}


@dataclass(frozen=True)
class ClusterSpec:
    kind: str
    name: str
    nodes: int | None
    network: str | None
    store: str | None = None
    storage: str | None = None


@dataclass(frozen=True)
class StudySpec:
    name: str
    repetitions: int
    timeout: float
    concurrency: int
    partition: str | None
    cluster: ClusterSpec
    images: tuple[str, ...]
    methods: tuple[str, ...]
    workloads: tuple[str, ...]
    node_counts: tuple[int, ...]
    zip: tuple[tuple[str, ...], ...] = ()
    exclude: tuple[Mapping[str, str | int], ...] = ()
    # (partial assignment, repetitions): matching experiments run that many times instead (the
    # first matching rule wins), so a fractional design spends repetitions where verdicts are
    repeat: tuple[tuple[Mapping[str, str | int], int], ...] = ()
    description: str = ""
    privileged: str = "auto"
    seed: int = 1
    cache: str = "cold"
    warmup: bool = True
    margin: float = 0.10
    sbatch_args: tuple[str, ...] = ()  # the site's own sbatch options (--account, --qos, ...)
    path: str = "<string>"
    text: str = field(default="", repr=False, compare=False)

    def repetitions_of(self, factors: Mapping[str, str | int]) -> int:
        """How many repetitions the experiment with FACTORS gets (``repeat`` rules, else all)."""
        for rule, n in self.repeat:
            if all(factors.get(k) == v for k, v in rule.items()):
                return n
        return self.repetitions

    @property
    def effective_concurrency(self) -> int:
        """Jobs at once as run: dropping caches is host-wide, so cold runs go one at a time."""
        return 1 if self.cache == "cold" else self.concurrency

    def adjustments(self) -> list[str]:
        """What the harness changes from the spec as written, each as a message for the user."""
        if self.cache == "cold" and self.concurrency > 1:
            return [f"concurrency = {self.concurrency} lowered to 1: cache = \"cold\" drops the "
                    "host's page caches before every run, which would disturb the runs beside "
                    "it (set cache = \"warm\" to run jobs side by side)"]
        return []

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def values(self, factor: str) -> tuple[str | int, ...]:
        table: dict[str, tuple[str | int, ...]] = {
            "image": self.images,
            "method": self.methods,
            "workload": self.workloads,
            "nodes": self.node_counts,
        }
        return table[factor]


def load_spec(
    path: str | Path,
    *,
    methods: Collection[str] = DEFAULT_METHODS,
    workloads: Collection[str] = DEFAULT_WORKLOADS,
    images: Collection[str] | None = None,
    networks: Collection[str] | None = None,
) -> StudySpec:
    """Read and validate the spec at PATH (see the module docstring for the format)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read study spec {p}: {exc.strerror}",
                          "give the path of a .toml file, e.g. examples/quick.toml") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text (byte {data[exc.start]:#04x})",
                          "TOML files are UTF-8; save the spec as UTF-8") from None
    return parse_spec(text, str(p), methods=methods, workloads=workloads, images=images,
                      networks=networks)


def parse_spec(
    text: str,
    source: str = "<string>",
    *,
    methods: Collection[str] = DEFAULT_METHODS,
    workloads: Collection[str] = DEFAULT_WORKLOADS,
    images: Collection[str] | None = None,
    networks: Collection[str] | None = None,
) -> StudySpec:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}",
                          "see https://toml.io for the syntax") from None
    v = _Validator(text, source)
    v.known_keys("", doc)
    study = v.table(doc, "study")
    cluster = v.table(doc, "cluster")
    matrix = v.table(doc, "matrix")
    for name, tbl in (("study", study), ("cluster", cluster), ("matrix", matrix)):
        v.known_keys(name, tbl)

    name = v.string(study, "study.name", required=True)
    if names.STUDY_NAME_RE.fullmatch(name) is None:  # it becomes results/NAME
        v.fail("study.name", name, names.STUDY_NAME_HINT)
    reps = v.integer(study, "study.repetitions", minimum=1, maximum=limits.MAX_REPETITIONS)
    timeout = v.duration(study, "study.timeout")
    concurrency = v.integer(study, "study.concurrency", minimum=1, maximum=limits.MAX_CONCURRENCY)
    partition = v.opt_string(study, "study.partition")
    if partition is not None and _PARTITION_RE.fullmatch(partition) is None:  # an #SBATCH line
        v.fail("study.partition", partition, "use letters, digits, '.', '_' and '-' only "
               "(at most 64 characters)")
    description = v.opt_string(study, "study.description") or ""
    privileged = v.string(study, "study.privileged")
    if privileged not in PRIVILEGED_MODES:
        v.fail("study.privileged", privileged, f"must be one of {', '.join(PRIVILEGED_MODES)}")
    seed = v.integer(study, "study.seed", minimum=0)
    cache = v.string(study, "study.cache")
    if cache not in CACHE_MODES:
        v.fail("study.cache", cache, f"must be one of {', '.join(CACHE_MODES)}")
    warmup = v.boolean(study, "study.warmup")
    margin = v.number(study, "study.margin")
    if not 0 < margin < 1:
        v.fail("study.margin", margin, "must be a fraction between 0 and 1, e.g. 0.10 for 10 %")
    sbatch_args = v.sbatch_args(study, "study.sbatch_args")

    kind = v.string(cluster, "cluster.kind")
    if kind not in CLUSTER_KINDS:
        v.fail("cluster.kind", kind, f"must be one of {', '.join(CLUSTER_KINDS)}")
    cname = v.string(cluster, "cluster.name")
    if kind == "virtual" and not names.is_cluster_name(cname):  # a state directory's name
        v.fail("cluster.name", cname, "not a valid virtual cluster name", names.CLUSTER_NAME_HINT)
    cnodes = v.opt_integer(cluster, "cluster.nodes", minimum=1, maximum=limits.MAX_NODES)
    network = v.opt_string(cluster, "cluster.network")
    store = v.opt_string(cluster, "cluster.store")
    storage = v.opt_string(cluster, "cluster.storage")
    if storage is not None and kind != "virtual":
        v.fail("cluster.storage", storage, "only for kind = \"virtual\"")
    if store is not None and kind != "existing":
        v.fail("cluster.store", store, "only for kind = \"existing\" (a virtual cluster's "
               "nodes see the store at /pfs/store)")
    if store is not None and not store.startswith("/"):
        v.fail("cluster.store", store, "must be an absolute path")
    if networks is not None and network is not None and network not in networks:
        v.unknown("cluster.network", network, networks)
    if kind == "virtual" and cnodes is None:
        v.fail("cluster.nodes", None, "a virtual cluster needs a node count")

    imgs = v.names(matrix, "matrix.images", images)
    for img in imgs:  # store entry names
        if not names.is_image_name(img):
            v.fail("matrix.images", img, "not a valid image name", names.IMAGE_NAME_HINT)
    meths = v.names(matrix, "matrix.methods", methods)
    wls = v.names(matrix, "matrix.workloads", workloads)
    counts = v.int_list(matrix, "matrix.node_counts")
    if cnodes is not None:
        for n in counts:
            if n > cnodes:
                v.fail("matrix.node_counts", n,
                       f"more nodes than the cluster has (cluster.nodes = {cnodes})")

    lists: dict[str, tuple[Any, ...]] = {
        "image": imgs, "method": meths, "workload": wls, "nodes": counts,
    }
    zips = v.zip_groups(matrix, lists)
    excludes = v.exclude_rules(matrix, lists)
    repeat = v.repeat_rules(matrix, lists)
    # experiments x repetitions before exclusions (zipped factors count once): expand() and the
    # run list are built in memory, so the bound comes first
    zipped = {f for g in zips for f in g}
    total = reps
    for f, vals in lists.items():
        if f not in zipped:
            total *= len(vals)
    for g in zips:
        total *= len(lists[g[0]])
    if total > limits.MAX_RUNS:
        v.fail("study.repetitions", reps,
               f"{total} runs (matrix x repetitions); at most {limits.MAX_RUNS} are allowed",
               "fewer repetitions or a smaller matrix (zip or exclude factors)")

    return StudySpec(
        name=name,
        repetitions=reps,
        timeout=timeout,
        concurrency=concurrency,
        partition=partition,
        cluster=ClusterSpec(kind=kind, name=cname, nodes=cnodes, network=network, store=store,
                                storage=storage),
        images=imgs,
        methods=meths,
        workloads=wls,
        node_counts=counts,
        zip=zips,
        exclude=excludes,
        repeat=repeat,
        description=description,
        privileged=privileged,
        seed=seed,
        cache=cache,
        warmup=warmup,
        margin=margin,
        sbatch_args=sbatch_args,
        path=source,
        text=text,
    )


def parse_duration(value: Any) -> float | None:
    """Seconds of a duration in Slurm's formats (a bare number is minutes, as in sbatch --time);
    None if VALUE is none of them. See shoal.slurm.timespec."""
    return parse_seconds(value)


class _Validator:
    """Typed getters that raise ConfigError naming file:line, key and value."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    # -- error helpers ------------------------------------------------------------------
    def fail(self, key: str, value: Any, problem: str, hint: str | None = None) -> None:
        line = find_line(self.text, key, value)
        where = f"{self.source}:{line}" if line else self.source
        shown = "(missing)" if value is None else _show(value)
        raise ConfigError(f"{where}: {key} = {shown}: {problem}", hint)

    def unknown(self, key: str, value: Any, known: Collection[str]) -> None:
        close = difflib.get_close_matches(str(value), list(known), n=1)
        hint = f"did you mean {close[0]!r}?" if close else None
        self.fail(key, value, f"unknown name; known: {', '.join(sorted(known))}", hint)

    def known_keys(self, table: str, tbl: Mapping[str, Any]) -> None:
        allowed = _ALLOWED[table]
        for k in tbl:
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1)
                key = f"{table}.{k}" if table else k
                line = find_line(self.text, key)
                where = f"{self.source}:{line}" if line else self.source
                raise ConfigError(
                    f"{where}: unknown key {key!r} (allowed here: {', '.join(allowed)})",
                    f"did you mean {close[0]!r}?" if close else None,
                )

    # -- getters ------------------------------------------------------------------------
    def table(self, doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        tbl = doc.get(key, {})
        if not isinstance(tbl, dict):
            self.fail(key, tbl, "must be a table ([" + key + "])")
        return tbl  # type: ignore[no-any-return]

    def _raw(self, tbl: Mapping[str, Any], key: str) -> Any:
        short = key.split(".")[-1]
        if short in tbl:
            return tbl[short]
        return DEFAULTS.get(key)

    def string(self, tbl: Mapping[str, Any], key: str, required: bool = False) -> str:
        val = self._raw(tbl, key)
        if val is None:
            self.fail(key, None, "required")
        if not isinstance(val, str) or not val.strip():
            self.fail(key, val, "must be a non-empty string")
        return str(val)

    def opt_string(self, tbl: Mapping[str, Any], key: str) -> str | None:
        val = self._raw(tbl, key)
        if val is None:
            return None
        if not isinstance(val, str) or not val.strip():
            self.fail(key, val, "must be a non-empty string")
        return str(val)

    def sbatch_args(self, tbl: Mapping[str, Any], key: str) -> tuple[str, ...]:
        val = self._raw(tbl, key)
        if val is None:
            return ()
        if not isinstance(val, list) or not all(isinstance(a, str) for a in val):
            self.fail(key, val, "must be a list of sbatch options",
                      'e.g. sbatch_args = ["--account=proj", "--qos=debug"]')
        for arg in val:
            if not arg.startswith("-") or "\n" in arg:
                self.fail(key, arg, "is not an sbatch option (one option per string, "
                          "starting with '-')", 'e.g. "--constraint=haswell"')
            opt = arg.split("=", 1)[0]
            if opt in SHOAL_SBATCH_OPTIONS:
                self.fail(key, arg, f"{opt} is set by shoal for every run",
                          "the matrix sets the node count; [study] timeout the time limit")
        return tuple(val)

    def integer(self, tbl: Mapping[str, Any], key: str, minimum: int = 0,
                maximum: int | None = None) -> int:
        val = self._raw(tbl, key)
        if val is None:
            self.fail(key, None, "required")
        return self._int(key, val, minimum, maximum)

    def opt_integer(self, tbl: Mapping[str, Any], key: str, minimum: int = 0,
                    maximum: int | None = None) -> int | None:
        val = self._raw(tbl, key)
        return None if val is None else self._int(key, val, minimum, maximum)

    def _int(self, key: str, val: Any, minimum: int, maximum: int | None = None) -> int:
        if isinstance(val, bool) or not isinstance(val, int):
            self.fail(key, val, "must be an integer")
        span = f"use {minimum} to {maximum}" if maximum is not None else None
        if val < minimum:
            self.fail(key, val, f"must be at least {minimum}", span)
        if maximum is not None and val > maximum:
            self.fail(key, val, f"must be at most {maximum}", span)
        return int(val)

    def boolean(self, tbl: Mapping[str, Any], key: str) -> bool:
        val = self._raw(tbl, key)
        if not isinstance(val, bool):
            self.fail(key, val, "must be true or false")
        return bool(val)

    def number(self, tbl: Mapping[str, Any], key: str) -> float:
        val = self._raw(tbl, key)
        if isinstance(val, bool) or not isinstance(val, int | float):
            self.fail(key, val, "must be a number")
        return float(val)

    def duration(self, tbl: Mapping[str, Any], key: str) -> float:
        val = self._raw(tbl, key)
        secs = parse_duration(val)
        if secs is None or not math.isfinite(secs) or secs <= 0:
            self.fail(key, val, "must be a positive duration: Slurm's '00:03:00', '3' (a bare "
                      "number is minutes, as in sbatch --time) or '90s', '10m', '1h30m'")
        assert secs is not None
        if secs > limits.MAX_TIMEOUT_S:
            self.fail(key, val, f"{secs:.0f} s is more than the longest job allowed "
                      f"({limits.MAX_TIMEOUT_S / 3600:.0f} h)")
        return secs

    def names(self, tbl: Mapping[str, Any], key: str,
              known: Collection[str] | None) -> tuple[str, ...]:
        val = self._raw(tbl, key)
        if val is None:
            self.fail(key, None, "required: a list of names")
        if not isinstance(val, list) or not val:
            self.fail(key, val, "must be a non-empty list of names")
        if len(val) > limits.MAX_LIST:
            self.fail(key, val, f"{len(val)} entries, at most {limits.MAX_LIST} are allowed")
        out: list[str] = []
        for item in val:
            if not isinstance(item, str) or not item.strip():
                self.fail(key, item, "must be a non-empty string")
            if known is not None and item not in known:
                self.unknown(key, item, known)
            if item in out:
                self.fail(key, item, "listed twice")
            out.append(item)
        return tuple(out)

    def int_list(self, tbl: Mapping[str, Any], key: str) -> tuple[int, ...]:
        val = self._raw(tbl, key)
        if val is None:
            self.fail(key, None, "required: a list of node counts")
        if not isinstance(val, list) or not val:
            self.fail(key, val, "must be a non-empty list of integers")
        out: list[int] = []
        for item in val:
            n = self._int(key, item, 1, limits.MAX_NODES)
            if n in out:
                self.fail(key, n, "listed twice")
            out.append(n)
        return tuple(out)

    def zip_groups(self, tbl: Mapping[str, Any],
                   lists: Mapping[str, tuple[Any, ...]]) -> tuple[tuple[str, ...], ...]:
        key = "matrix.zip"
        val = tbl.get("zip", [])
        if not isinstance(val, list):
            self.fail(key, val, "must be a list of factor-name lists, e.g. [[\"image\", "
                      "\"workload\"]]")
        used: set[str] = set()
        groups: list[tuple[str, ...]] = []
        for group in val:
            if not isinstance(group, list) or len(group) < 2:
                self.fail(key, group, "each group lists at least two factor names")
            for f in group:
                if f not in FACTORS:
                    self.unknown(key, f, FACTORS)
                if f in used:
                    self.fail(key, f, "a factor can be in one zip group only")
                used.add(f)
            lengths = {f: len(lists[f]) for f in group}
            if len(set(lengths.values())) != 1:
                desc = ", ".join(f"{f}: {n}" for f, n in lengths.items())
                self.fail(key, group, f"zipped factors need lists of equal length ({desc})")
            groups.append(tuple(group))
        return tuple(groups)

    def repeat_rules(self, tbl: Mapping[str, Any], lists: Mapping[str, tuple[Any, ...]]
                     ) -> tuple[tuple[Mapping[str, str | int], int], ...]:
        return _repeat_rules(self, tbl, lists)

    def exclude_rules(self, tbl: Mapping[str, Any],
                      lists: Mapping[str, tuple[Any, ...]]) -> tuple[Mapping[str, str | int], ...]:
        key = "matrix.exclude"
        val = tbl.get("exclude", [])
        if not isinstance(val, list):
            self.fail(key, val, "must be a list of tables, e.g. [{method = \"squashfuse\"}]")
        rules: list[dict[str, str | int]] = []
        for i, rule in enumerate(val):
            if not isinstance(rule, dict) or not rule:
                self.fail(key, rule, "each rule is a non-empty table of factor = value")
            for f, fv in rule.items():
                if f not in FACTORS:
                    self.unknown(f"{key}[{i}]", f, FACTORS)
                if fv not in lists[f]:
                    self.fail(f"{key}[{i}].{f}", fv,
                              f"not among the study's {f} values ({_show(list(lists[f]))})")
            rules.append(dict(rule))
        return tuple(rules)


def _repeat_rules(v: _Validator, tbl: Mapping[str, Any], lists: Mapping[str, tuple[Any, ...]]
                  ) -> tuple[tuple[Mapping[str, str | int], int], ...]:
    key = "matrix.repeat"
    val = tbl.get("repeat", [])
    if not isinstance(val, list):
        v.fail(key, val, "must be a list of tables, e.g. [{nodes = 32, repetitions = 3}]")
    out: list[tuple[Mapping[str, str | int], int]] = []
    for i, rule in enumerate(val):
        if not isinstance(rule, dict) or "repetitions" not in rule:
            v.fail(key, rule, "each rule is a table of factor = value plus repetitions = N")
        n = rule["repetitions"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            v.fail(f"{key}[{i}].repetitions", n, "must be an integer of at least 1")
        cond = {f: fv for f, fv in rule.items() if f != "repetitions"}
        for f, fv in cond.items():
            if f not in FACTORS:
                v.unknown(f"{key}[{i}]", f, FACTORS)
            if fv not in lists[f]:
                v.fail(f"{key}[{i}].{f}", fv,
                       f"not among the study's {f} values ({_show(list(lists[f]))})")
        out.append((cond, int(n)))
    return tuple(out)


def _show(value: Any) -> str:
    # one line, bounded: control characters escaped as TOML (and JSON) would write them
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_PARTITION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TABLE = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def find_line(text: str, key: str, value: Any = None) -> int | None:
    """The 1-based line of KEY (dotted, ``matrix.exclude[0].method``) in TOML TEXT.

    With VALUE, the line inside that key's value holding it (lists span lines); otherwise the
    key's own line. None when the key is not written in the file (a default or a missing key).
    """
    parts = [re.sub(r"\[\d+\]$", "", p) for p in key.split(".")]
    if len(parts) == 1:
        table, name = "", parts[0]
    else:
        table, name = parts[0], parts[1]
    lines = text.splitlines()
    current = ""
    depth = 0
    start: int | None = None
    key_re = re.compile(rf"^\s*{re.escape(name)}\s*=")
    for i, line in enumerate(lines):
        bare = _STRINGS.sub('""', line).split("#", 1)[0]
        if depth == 0:
            m = _TABLE.match(line)
            if m:
                if start is not None:
                    break
                current = m.group(1).strip().strip('"')
                if len(parts) == 1 and current == name:
                    return i + 1
                continue
            if start is not None and re.match(r"^\s*[A-Za-z0-9_\-\"]+\s*=", line):
                break  # the next key: the value we looked in has ended
            if current == table and key_re.match(line):
                start = i
                if value is None:
                    return i + 1
        depth += bare.count("[") + bare.count("{") - bare.count("]") - bare.count("}")
        depth = max(depth, 0)
        if start is not None and value is not None and _mentions(line, value, i == start, name):
            return i + 1
    return start + 1 if start is not None else None


def _mentions(line: str, value: Any, is_key_line: bool, name: str) -> bool:
    if is_key_line:
        line = line.split("=", 1)[1] if "=" in line else line
    if isinstance(value, str):
        return f'"{value}"' in line or f"'{value}'" in line or re.search(
            rf"(^|[\s{{,]){re.escape(value)}\s*=", line) is not None
    if isinstance(value, bool):
        return ("true" if value else "false") in line
    if isinstance(value, int | float):
        return re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", line) is not None
    if isinstance(value, list) and value:
        return _mentions(line, value[0], False, name)
    return False
