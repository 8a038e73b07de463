"""Study spec validation (errors name file:line, key and value) and matrix expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.errors import ConfigError
from shoal.study.matrix import Experiment, expand, experiment_id, runs
from shoal.study.spec import find_line, load_spec, parse_duration, parse_spec

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
[study]
name = "t1"
repetitions = 3
timeout = "2m"
concurrency = 2

[cluster]
kind = "virtual"
nodes = 4
network = "eth10g"

[matrix]
images = ["hello", "lammps"]
methods = [
    "untar",
    "squashfuse",
]
workloads = ["catwalk", "lammps"]
node_counts = [1, 2, 4]
exclude = [{method = "squashfuse", workload = "lammps"}]
"""


def test_good_spec_loads_with_defaults() -> None:
    spec = parse_spec(GOOD, "t.toml")
    assert spec.name == "t1" and spec.repetitions == 3 and spec.timeout == 120.0
    assert spec.concurrency == 2 and spec.partition is None
    assert spec.cluster.kind == "virtual" and spec.cluster.nodes == 4
    assert spec.cluster.name == "shoal" and spec.cluster.network == "eth10g"
    assert spec.methods == ("untar", "squashfuse") and spec.node_counts == (1, 2, 4)
    assert spec.exclude == ({"method": "squashfuse", "workload": "lammps"},)
    minimal = parse_spec('[study]\nname="m"\n[cluster]\nkind="existing"\n[matrix]\n'
                         'images=["a"]\nmethods=["untar"]\nworkloads=["catwalk"]\nnode_counts=[1]\n')
    assert minimal.repetitions == 5 and minimal.concurrency == 1 and minimal.timeout == 600.0
    assert minimal.cluster.nodes is None


@pytest.mark.parametrize(
    ("old", "new", "line", "needle"),
    [
        ('    "squashfuse",\n', '    "squashfusee",\n', 16, 'matrix.methods = "squashfusee"'),
        ("repetitions = 3", "repetitions = 0", 3, "study.repetitions = 0: must be at least 1"),
        ("repetitions = 3", 'repetitions = "3"', 3, "must be an integer"),
        ('timeout = "2m"', 'timeout = "soon"', 4, 'study.timeout = "soon"'),
        ('kind = "virtual"', 'kind = "cloud"', 8, 'cluster.kind = "cloud"'),
        ("node_counts = [1, 2, 4]", "node_counts = [1, 2, 8]", 19, "matrix.node_counts = 8"),
        ('"catwalk", "lammps"]', '"catwalk", "hpl"]', 18, 'matrix.workloads = "hpl"'),
        ('workload = "lammps"}', 'workload = "statwalk"}', 20, 'exclude[0].workload = "statwalk"'),
        ("concurrency = 2", "concurency = 2", 5, "unknown key 'study.concurency'"),
        ('name = "t1"', 'name = "t 1"', 2, 'study.name = "t 1"'),
    ],
)
def test_bad_values_name_line_key_and_value(old: str, new: str, line: int, needle: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError) as err:
        parse_spec(GOOD.replace(old, new, 1), "t.toml")
    msg = err.value.message
    assert msg.startswith(f"t.toml:{line}: "), msg
    assert needle in msg, msg


def test_suggestions_and_registries() -> None:
    with pytest.raises(ConfigError) as err:
        parse_spec(GOOD.replace('"untar"', '"untarr"'), "t.toml")
    assert err.value.hint == "did you mean 'untar'?"
    spec = parse_spec(GOOD.replace('"untar"', '"registry"'), methods={"registry", "squashfuse"})
    assert spec.methods[0] == "registry"
    with pytest.raises(ConfigError, match=r"cluster\.network"):
        parse_spec(GOOD, networks={"omnipath"})
    with pytest.raises(ConfigError, match=r'matrix\.images = "hello"'):
        parse_spec(GOOD, images={"lammps"})


def test_missing_and_malformed() -> None:
    with pytest.raises(ConfigError, match=r"t.toml: study.name = \(missing\): required"):
        parse_spec(GOOD.replace('name = "t1"\n', ""), "t.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_spec("[study\n", "t.toml")
    with pytest.raises(ConfigError, match="virtual cluster needs a node count"):
        parse_spec(GOOD.replace("nodes = 4\n", ""))
    with pytest.raises(ConfigError, match="cannot read"):
        load_spec("/nonexistent/spec.toml")


def test_zip_validation() -> None:
    zipped = GOOD.replace("exclude = [", 'zip = [["image", "workload"]]\nexclude = [')
    spec = parse_spec(zipped)
    assert spec.zip == (("image", "workload"),)
    with pytest.raises(ConfigError, match=r"equal length \(image: 1, workload: 2\)"):
        parse_spec(zipped.replace('images = ["hello", "lammps"]', 'images = ["hello"]'))
    with pytest.raises(ConfigError, match="unknown name"):
        parse_spec(zipped.replace('["image", "workload"]', '["image", "wl"]'))


def test_find_line() -> None:
    assert find_line(GOOD, "cluster.nodes") == 9
    assert find_line(GOOD, "matrix.methods", "squashfuse") == 16
    assert find_line(GOOD, "matrix.methods") == 14
    assert find_line(GOOD, "study.partition") is None
    assert find_line(GOOD, "cluster") == 7


def test_parse_duration() -> None:
    assert parse_duration(90) == 90 * 60.0  # Slurm: a bare number is minutes
    assert parse_duration("90") == 90 * 60.0
    assert parse_duration("00:03:00") == 180.0  # Slurm H:M:S
    assert parse_duration("3:30") == 210.0  # Slurm M:S
    assert parse_duration("1-02") == 26 * 3600.0  # Slurm D-H
    assert parse_duration("1-02:03:04") == 93784.0
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("45s") == 45.0
    assert parse_duration("10m") == 600.0
    assert parse_duration("x") is None and parse_duration(True) is None


def test_expansion_exclude_zip_and_stable_ids() -> None:
    spec = parse_spec(GOOD)
    exps = expand(spec)
    # 2 images x 2 methods x 2 workloads x 3 counts = 24, minus squashfuse+lammps (2 x 3) = 18
    assert len(exps) == 18
    assert not any(e.method == "squashfuse" and e.workload == "lammps" for e in exps)
    assert exps[0] == Experiment("hello", "untar", "catwalk", 1)
    assert exps == expand(parse_spec(GOOD))
    # the id depends on the factors only, not on list order or other settings
    reordered = parse_spec(GOOD.replace('node_counts = [1, 2, 4]', 'node_counts = [4, 2, 1]')
                           .replace("repetitions = 3", "repetitions = 5"))
    assert {e.id for e in expand(reordered)} == {e.id for e in exps}
    assert exps[0].id == experiment_id(
        {"nodes": 1, "workload": "catwalk", "method": "untar", "image": "hello"})
    assert len(exps[0].id) == 12 and len({e.id for e in exps}) == 18
    # pinned: a change of the hashing would silently split old and new results
    assert Experiment("hello", "untar", "catwalk", 1).id == experiment_id(
        {"image": "hello", "method": "untar", "workload": "catwalk", "nodes": 1})

    zipped = parse_spec(GOOD.replace("exclude = [", 'zip = [["image", "workload"]]\n#exclude = ['))
    pairs = {(e.image, e.workload) for e in expand(zipped)}
    assert pairs == {("hello", "catwalk"), ("lammps", "lammps")}
    assert len(expand(zipped)) == 2 * 2 * 3


def test_runs_are_repetition_major() -> None:
    exps = expand(parse_spec(GOOD))
    keys = runs(exps, 3)
    assert len(keys) == 54
    assert [k.rep for k in keys[:18]] == [0] * 18 and keys[18].rep == 1
    assert keys[0].name == f"{exps[0].id}-r0"


@pytest.mark.parametrize("name", ["quick.toml", "full.toml"])
def test_examples_are_valid(name: str) -> None:
    spec = load_spec(REPO / "examples" / name)
    assert expand(spec)
