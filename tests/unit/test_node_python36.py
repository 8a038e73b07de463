"""The node side under a real Python 3.6 (RHEL 8's): every module the agent bundle carries
imports, and the pure parts give the answers they give on the host (host lists against captured
scontrol output, tree digests). The agent's steps themselves run under 3.6 in
test_dist_nodeagent.py; `make lint` checks the same modules statically (vermin)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from shoal.bundle import MODULES, write_bundle
from shoal.images.treedigest import tree_digest
from tests.python36 import python36

DATA = Path(__file__).parent / "data"

SCRIPT = r"""
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
mods = [m[:-3].replace("/", ".") for m in json.loads(sys.argv[2])]
for m in mods:
    importlib.import_module(m)
from shoal.slurm.hostlist import compress, expand
from shoal.images.treedigest import tree_digest
bad = []
for line in open(sys.argv[3]):
    if not line.strip() or line.startswith("#"):
        continue
    verb, arg, out = line.rstrip("\n").split("\t")
    got = " ".join(expand(arg)) if verb == "hostnames" else compress(
        expand(arg), sort=verb == "hostlistsorted")
    if got != out:
        bad.append([verb, arg, got, out])
print(json.dumps({"version": list(sys.version_info[:2]), "modules": len(mods), "bad": bad,
                  "digest": tree_digest(sys.argv[4]).digest}))
"""


def test_node_modules_on_python36(tmp_path: Path) -> None:
    py = python36()
    agent = write_bundle(tmp_path / "agent.pyz")
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_bytes(b"x" * 1000)
    (tree / "l").symlink_to("d/f")
    out = subprocess.run([py, "-I", "-S", "-c", SCRIPT, str(agent), json.dumps(list(MODULES)),
                          str(DATA / "scontrol_hostlist_22.05.tsv"), str(tree)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["version"] == [3, 6] and doc["modules"] == len(MODULES)
    assert doc["bad"] == []
    assert doc["digest"] == tree_digest(str(tree)).digest
