"""The site configuration (/etc/shoal/shoal.toml): keys, precedence, errors; and the message a
job gets when the nodes do not see the store where this side looks for the node agent."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal import paths, siteconfig
from shoal.errors import ConfigError
from shoal.staging.jobstep import missing_agent


@pytest.fixture()
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    f = tmp_path / "shoal.toml"
    monkeypatch.setenv("SHOAL_CONFIG", str(f))
    for var in ("SHOAL_STORE", "SHOAL_STATE", "SHOAL_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return f


def test_site_file_sets_store_and_env_wins(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert paths.store_root() == Path("/var/lib/shoal/store")  # no file: the defaults
    site.write_text('store = "/pfs/store"\nstate = "/srv/shoal"\nsbatch_args = ["--account=p"]\n')
    assert paths.store_root() == Path("/pfs/store")
    assert paths.state_root() == Path("/srv/shoal") and paths.clusters_root().parent == Path("/srv/shoal")
    assert siteconfig.load().sbatch_args == ("--account=p",)
    monkeypatch.setenv("SHOAL_STORE", "/elsewhere")
    assert paths.store_root() == Path("/elsewhere")
    monkeypatch.setenv("SHOAL_CONFIG", "")  # no site file at all
    monkeypatch.delenv("SHOAL_STORE")
    assert paths.store_root() == Path("/var/lib/shoal/store")


@pytest.mark.parametrize(("text", "needle"), [
    ('stor = "/x"\n', "unknown key 'stor'"),
    ('store = "relative"\n', "must be an absolute path"),
    ("sbatch_args = \"--qos=x\"\n", "must be a list of sbatch options"),
    ("store = \n", "not valid TOML"),
])
def test_bad_site_file_names_file_and_key(site: Path, text: str, needle: str) -> None:
    site.write_text(text)
    with pytest.raises(ConfigError) as info:
        siteconfig.load()
    assert str(site) in info.value.message and needle in info.value.message


def test_virtual_cluster_site_file_points_at_pfs() -> None:
    import tomllib

    doc = tomllib.loads(siteconfig.render("/pfs/store"))
    assert siteconfig.parse(doc, "x").store == "/pfs/store"


def test_missing_agent_names_the_path() -> None:
    err = ("/usr/bin/python3: can't open file '/var/lib/shoal/store/.shoal/agent-1.pyz': "
           "[Errno 2] No such file or directory\nsrun: error: node1: task 0: Exited with exit code 2")
    why = missing_agent(err)
    assert "/var/lib/shoal/store/.shoal/agent-1.pyz" in why and "/etc/shoal/shoal.toml" in why
    assert missing_agent("srun: error: node1: task 0: Exited with exit code 1") == ""
