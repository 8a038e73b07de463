"""The virtual cluster, really run: Slurm jobs, sbcast, shared and local storage, ssh, healing."""

from __future__ import annotations

import time

import pytest

from shoal.cluster.state import ClusterDir
from shoal.cluster.status import cluster_status, supervisor_of
from tests.conftest import ClusterHandle

pytestmark = pytest.mark.cluster


def test_srun_on_all_nodes_gives_distinct_hostnames(cluster: ClusterHandle) -> None:
    out = cluster.ctl("srun", "-N4", "hostname").stdout.split()
    assert sorted(out) == sorted(cluster.nodes)


def test_sbatch_job_completes_and_is_accounted(cluster: ClusterHandle) -> None:
    job = cluster.ctl("sbatch", "--parsable", "-N2", "-o", "/pfs/sbatch-%j.out",
                      "--wrap", "srun hostname").stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    state = ""
    while time.monotonic() < deadline:
        state = cluster.ctl("sacct", "-X", "-n", "-P", "-j", job, "-o", "State").stdout.strip()
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            break
        time.sleep(0.5)
    assert state == "COMPLETED"
    # The batch output was written by a node onto /pfs and is read on the login node.
    names = cluster.ctl("cat", f"/pfs/sbatch-{job}.out").stdout.split()
    assert len(set(names)) == 2 and set(names) <= set(cluster.nodes)


def test_sbcast_puts_file_in_node_local_tmp(cluster: ClusterHandle) -> None:
    cluster.ctl("sh", "-c", "head -c 100000 /dev/urandom > /pfs/sbcast-src")
    out = cluster.ctl(
        "salloc", "-N4", "sh", "-c",
        "sbcast -f /pfs/sbcast-src /tmp/sbcast-dst && "
        "srun -N4 sh -c 'echo $(hostname) $(wc -c < /tmp/sbcast-dst)'",
    ).stdout
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("node")]
    assert sorted(n for n, _ in lines) == sorted(cluster.nodes)
    assert all(size == "100000" for _, size in lines)


def test_node_tmp_is_local_and_pfs_home_are_shared(cluster: ClusterHandle) -> None:
    a, b = cluster.nodes[0], cluster.nodes[1]
    cluster.on(a, "sh", "-c",
               "echo local > /tmp/only-here && echo shared > /pfs/from-a && echo h > /home/shoal/from-a")
    assert cluster.on(b, "test", "-e", "/tmp/only-here", check=False).returncode != 0
    assert cluster.on(b, "cat", "/pfs/from-a").stdout.strip() == "shared"
    assert cluster.on(b, "cat", "/home/shoal/from-a").stdout.strip() == "h"
    assert cluster.ctl("cat", "/pfs/from-a").stdout.strip() == "shared"
    cluster.on(a, "rm", "-f", "/tmp/only-here", "/pfs/from-a", "/home/shoal/from-a")


def test_ssh_with_key_auth_from_controller(cluster: ClusterHandle) -> None:
    node = cluster.nodes[-1]
    out = cluster.ctl("ssh", "-o", "BatchMode=yes", node, "hostname").stdout.strip()
    assert out == node
    # and as the unprivileged user, node to node
    out = cluster.ctl("runuser", "-u", "shoal", "--", "ssh", "-o", "BatchMode=yes", cluster.nodes[0],
                      "ssh", "-o", "BatchMode=yes", node, "id", "-u").stdout.strip()
    assert out == "1000"


def test_job_runs_as_uid_1000(cluster: ClusterHandle) -> None:
    out = cluster.ctl("runuser", "-u", "shoal", "--", "sh", "-c", "cd /home/shoal && srun -N2 id -u").stdout
    assert out.split() == ["1000", "1000"]
    user = cluster.ctl("runuser", "-u", "shoal", "--", "sh", "-c",
                       "cd /home/shoal && srun -N1 sh -c 'echo $USER'").stdout.strip()
    assert user == "shoal"


@pytest.mark.parametrize("program", ["slurmd", "munged"])
def test_killed_daemon_is_restarted_by_supervisord(cluster: ClusterHandle, program: str) -> None:
    node = cluster.nodes[1]
    # Not while an earlier test's job is still completing there: slurmd killed in the middle
    # of an Epilog leaves that job COMPLETING until slurmctld asks again, minutes later.
    assert cluster.wait_idle(node) == "idle"
    state = ClusterDir(cluster.name).load()
    sup = supervisor_of(state, node)
    before = {p.name: p for p in sup.programs()}[program]
    assert before.state == "RUNNING"
    cluster.on(node, "kill", "-9", str(before.pid))
    deadline = time.monotonic() + 30
    after = before
    while time.monotonic() < deadline:
        after = {p.name: p for p in sup.programs()}[program]
        if after.state == "RUNNING" and after.pid != before.pid:
            break
        time.sleep(0.3)
    assert after.state == "RUNNING" and after.pid != before.pid
    assert cluster.wait_idle(node) == "idle"
    assert cluster.ctl("srun", "-w", node, "hostname").stdout.strip() == node


def test_service_command_restarts_a_program(cluster: ClusterHandle) -> None:
    from click.testing import CliRunner

    from shoal.cli.cluster import cluster as cluster_cli

    node = cluster.nodes[0]
    res = CliRunner().invoke(cluster_cli, ["service", "--name", cluster.name, node, "sshd", "restart"])
    assert res.exit_code == 0, res.output
    assert "RUNNING" in res.output


def test_status_reports_programs_and_memory(cluster: ClusterHandle) -> None:
    _, nodes = cluster_status(cluster.name)
    assert [n.name for n in nodes] == cluster.nodes
    for n in nodes:
        assert n.slurm_state in ("idle", "mix", "alloc")
        # the four node services, and the state listener (an eventlistener) beside them
        assert {p.name for p in n.programs} == {"rsyslogd", "munged", "slurmd", "sshd",
                                                "shoal-state"}
        assert all(p.state == "RUNNING" for p in n.programs)
        assert 5e6 < n.rss_bytes < 200e6


def test_unprivileged_user_can_fuse_mount_on_a_node(cluster: ClusterHandle) -> None:
    node = cluster.nodes[0]
    script = (
        "set -e; d=$(mktemp -d /tmp/fuse.XXXX); mkdir $d/src $d/mnt; echo hi > $d/src/f; "
        "mksquashfs $d/src $d/x.sqfs -quiet -noappend >/dev/null; chown -R 1000 $d; "
        "runuser -u shoal -- sh -c \"squashfuse $d/x.sqfs $d/mnt && cat $d/mnt/f && fusermount3 -u $d/mnt\"; "
        "rm -rf $d"
    )
    assert cluster.on(node, "sh", "-c", script).stdout.strip() == "hi"
