"""Property-based tests (hypothesis) over the cluster config, the study spec and CLI names:
whatever the input, the result is a valid object or one ShoalError with a one-line message;
never another exception (a traceback for the user), never a file written outside the place the
command owns. Each test counts the inputs it tried (FUZZED, printed at the end of the module and
recorded in docs/SECURITY.md)."""

from __future__ import annotations

import os
import string
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import names
from shoal.cli.main import main
from shoal.cluster import config as ccfg
from shoal.errors import ShoalError
from shoal.study.spec import parse_spec

FUZZED: Counter[str] = Counter()
EXAMPLES = int(os.environ.get("SHOAL_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# TOML values of every type tomllib can produce, nested a little
scalars = st.one_of(
    st.integers(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["", "x\n", "../..", "/etc", "2G", "99999999999G", "node1", "shoal", "10m",
                     "eth10g", "sshfs", "Prolog=/tmp/x", "1h30m", "\x00", "é", "mpihello"]),
    st.dates(), st.datetimes(),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)

CLUSTER_KEYS = [*ccfg._KEYS, "cluster", "colour"]


def _check_error(exc: ShoalError) -> None:
    assert exc.message and "\n" not in exc.message, repr(exc.message)
    assert "Traceback" not in exc.message


# -- cluster config -------------------------------------------------------------------------------

@FUZZ
@given(st.dictionaries(st.sampled_from(CLUSTER_KEYS), values, max_size=6))
def test_cluster_config_mapping(raw: dict[str, Any]) -> None:
    FUZZED["cluster config (mapping)"] += 1
    try:
        cfg = ccfg.validate(raw)
    except ShoalError as exc:
        _check_error(exc)
        return
    # valid: every bound holds
    assert names.is_cluster_name(cfg.name)
    assert 1 <= cfg.nodes <= ccfg.MAX_NODES and 1 <= cfg.cpus_per_node <= ccfg.MAX_CPUS_PER_NODE
    assert 64 <= cfg.memory_mb_per_node <= ccfg.machine_memory_mb()
    assert all(isinstance(x, str) and "\n" not in x for x in cfg.extra_slurm_conf)


def _toml_line(key: str, value: Any) -> str:
    if isinstance(value, str):
        return f"{key} = {_toml_str(value)}"
    if isinstance(value, bool):
        return f"{key} = {'true' if value else 'false'}"
    if isinstance(value, list):
        return f"{key} = [{', '.join(_toml_str(v) if isinstance(v, str) else str(v) for v in value)}]"
    return f"{key} = {value}"


def _toml_str(s: str) -> str:
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in s) + '"'


@pytest.fixture
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "state"
    root.mkdir()
    monkeypatch.setenv("SHOAL_STATE", str(root))
    monkeypatch.setenv("SHOAL_STORE", str(root / "store"))
    yield tmp_path


def _tree(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


@FUZZ
@given(st.one_of(
    st.binary(max_size=200),
    st.lists(st.tuples(st.sampled_from(CLUSTER_KEYS), scalars | st.lists(scalars, max_size=3)),
             max_size=6).map(lambda kv: "\n".join(_toml_line(k, v) for k, v in kv).encode()),
    st.lists(st.sampled_from(["[cluster]", "[[cluster]]", "cluster = 5", 'name = "x"', "nodes = 2",
                              "[other]", "\xff", 'tmpfs_size = "1G"', "extra_slurm_conf = [1]",
                              "nodes = 99999999999999999999", "nodes = 1.5", "x = {a = 1}"]),
             max_size=6).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogateescape")),
))
def test_cluster_config_file(private_state: Path, data: bytes) -> None:
    FUZZED["cluster config (file bytes)"] += 1
    f = private_state / "c.toml"
    f.write_bytes(data)
    before = _tree(private_state)
    try:
        ccfg.load(f, {})
    except ShoalError as exc:
        _check_error(exc)
    assert _tree(private_state) == before  # loading writes nothing


# -- study spec -------------------------------------------------------------------------------------

BASE_SPEC = {
    "study": {"name": "s", "repetitions": 2, "timeout": "10m"},
    "cluster": {"kind": "virtual", "name": "demo", "nodes": 4},
    "matrix": {"images": ["mpihello"], "methods": ["untar"], "workloads": ["catwalk"],
               "node_counts": [1, 4]},
}
SPEC_KEYS = [(t, k) for t, keys in {
    "study": ["name", "repetitions", "timeout", "concurrency", "partition", "description",
              "privileged", "bogus"],
    "cluster": ["kind", "name", "nodes", "network", "storage", "store"],
    "matrix": ["images", "methods", "workloads", "node_counts", "zip", "exclude"],
}.items() for k in keys]


def _dump(doc: dict[str, Any]) -> str:
    out = []
    for table, kv in doc.items():
        if not isinstance(kv, dict):
            out.append(_toml_value_line(table, kv))
            continue
        out.append(f"[{table}]")
        out += [_toml_value_line(k, v) for k, v in kv.items()]
    return "\n".join(out) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf")
                                     else repr(v))
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_str(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return str(v)  # int, date, datetime (TOML accepts ISO forms)


def _toml_value_line(k: str, v: Any) -> str:
    return f"{_toml_str(k)} = {_toml_value(v)}"


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(SPEC_KEYS), values), max_size=5),
       st.sampled_from([None, "study", "cluster", "matrix"]))
def test_study_spec(changes: list[tuple[tuple[str, str], Any]], replace_table: str | None) -> None:
    FUZZED["study spec"] += 1
    doc: dict[str, Any] = {t: dict(kv) for t, kv in BASE_SPEC.items()}
    for (table, key), value in changes:
        doc[table][key] = value
    if replace_table is not None and changes:
        doc[replace_table] = changes[0][1]
    text = _dump(doc)
    try:
        spec = parse_spec(text, "fuzz.toml")
    except ShoalError as exc:
        _check_error(exc)
        return
    assert names.STUDY_NAME_RE.fullmatch(spec.name)
    assert 0 < spec.timeout <= 24 * 3600 and 1 <= spec.repetitions <= 1000
    assert all(names.is_image_name(i) for i in spec.images)


@FUZZ
@given(st.binary(max_size=300))
def test_study_spec_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    FUZZED["study spec (file bytes)"] += 1
    from shoal.study.spec import load_spec

    f = tmp_path_factory.mktemp("spec") / "s.toml"
    f.write_bytes(data)
    try:
        load_spec(f)
    except ShoalError as exc:
        _check_error(exc)


# -- names on the command line ----------------------------------------------------------------------

name_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=string.ascii_lowercase + string.digits + "./-_\n\r\t \x00", max_size=14),
    st.sampled_from(["..", ".", "../x", "/x", "x\n", "x/..", ".lock-x", "~", "*", "$(id)"]),
)


@FUZZ
@given(name_text)
def test_names_are_safe_path_components(name: str) -> None:
    FUZZED["names (cluster/image/study)"] += 1
    for check in (names.cluster_name, names.image_name, names.study_name, names.node_name):
        try:
            ok = check(name)
        except ShoalError as exc:
            _check_error(exc)
            continue
        # a valid name is one plain path component
        assert ok == name and "/" not in ok and ok not in (".", "..") and not ok.startswith(".")
        assert ok.isprintable() and ok == ok.strip() and len(ok) <= 64


@FUZZ
@given(st.sampled_from([
    ["cluster", "down", "--name"], ["cluster", "status", "--name"], ["cluster", "logs", "--name"],
    ["image", "rm"], ["image", "verify"], ["image", "export"],
]), name_text.filter(lambda s: not s.startswith("-") and "\x00" not in s))
def test_cli_names(private_state: Path, argv: list[str], name: str) -> None:
    FUZZED["CLI names"] += 1
    outside = private_state / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "cluster.json").write_text("{}")
    before = _tree(private_state)
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        code = main([*argv, name])
    valid = names.is_image_name(name) if argv[0] == "image" else names.is_cluster_name(name)
    if not valid:
        assert code == 2, (argv, name, code, err.getvalue())  # refused as bad input
    assert "Traceback" not in err.getvalue()
    assert _tree(private_state) == before  # nothing created, nothing removed


def teardown_module() -> None:
    total = sum(FUZZED.values())
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(FUZZED.items()))
    print(f"\nfuzzed {total} inputs ({summary})")
