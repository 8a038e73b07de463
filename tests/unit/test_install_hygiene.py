"""`make setup` installs what the host uses and leaves no service enabled at boot."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = REPO / "packaging" / "debian-packages.txt"
SHOAL_SERVICES = ["slurmctld", "slurmd", "slurmdbd", "munge", "mariadb", "supervisor",
                  "docker-registry"]


def _packages() -> list[str]:
    return [ln.strip() for ln in PACKAGES.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]


def test_package_list_has_only_what_the_host_uses() -> None:
    pkgs = _packages()
    # the images carry their own MPI and LAMMPS; the metapackage drags in docker.io and buildah
    for unwanted in ("lammps", "libopenmpi-dev", "charliecloud", "charliecloud-builders",
                     "docker.io", "buildah"):
        assert unwanted not in pkgs, unwanted
    assert {"charliecloud-runtime", "charliecloud-common", "chromium"} <= set(pkgs)
    readme = (REPO / "README.md").read_text()
    assert "packaging/debian-packages.txt" in readme and "disabled at boot" in readme


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("systemctl") is None,
                    reason="needs root and systemctl")
def test_setup_leaves_no_service_enabled_at_boot() -> None:
    # idempotent: with everything installed it only checks (and disables what an older setup
    # left enabled)
    subprocess.run(["sh", str(REPO / "scripts" / "install-debs.sh")], check=True, timeout=1800,
                   capture_output=True)
    units = list(SHOAL_SERVICES)
    auto = subprocess.run(["apt-mark", "showauto", "docker.io"], capture_output=True, text=True)
    if auto.stdout.strip() == "docker.io":  # only ever a dependency: it must not run at boot
        units += ["docker.service", "docker.socket", "containerd.service"]
    enabled = []
    for unit in units:
        state = subprocess.run(["systemctl", "is-enabled", unit], capture_output=True,
                               text=True).stdout.strip()
        if state == "enabled":
            enabled.append(unit)
    assert enabled == []
    for tool in ("ch-image", "ch-convert"):
        assert any(Path(d, tool).exists() for d in ("/usr/bin", "/usr/local/bin")), tool
