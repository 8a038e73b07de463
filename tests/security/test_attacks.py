"""Attacks of a job user on a real virtual cluster (and the node's confinement),
each performed as uid 1000 (`shoal` on the login node, or in the jobs it submits), on bind storage
and on sshfs storage: one 2-node cluster per storage mode for the whole module.

Every test names the attack it performs; before the fix each one succeeded (docs/SECURITY.md has
the table: attack, what it did, what blocks it now). Root's own view (`cluster exec`, srun as root)
is used only to look at the result, or to play root in a node where the attack is node root's.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shoal.cluster import manager
from shoal.cluster.config import ClusterConfig
from shoal.cluster.enter import enter_prefix
from shoal.cluster.state import ClusterDir
from shoal.runner import Completed, run
from tests.conftest import SESSION_CLUSTER

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
VENV_SITE = REPO / ".venv" / "lib" / "python3.11" / "site-packages"
IMAGE = "mpihello"
NODE = "node1"


@dataclass
class Sec:
    name: str
    storage: str
    nodes: list[str] = field(default_factory=list)

    def _prefix(self, host: str = "ctl") -> list[str]:
        return enter_prefix(ClusterDir(self.name).load(), host)

    def root(self, *cmd: str, host: str = "ctl", check: bool = True, timeout: float = 120) -> Completed:
        """Root's view: run CMD on the login node or (host=nodeN) as the admin inside a node."""
        return run([*self._prefix(host), *cmd], check=check, timeout=timeout)

    def user(self, script: str, check: bool = False, timeout: float = 180, **env: str) -> Completed:
        """The attacker: SCRIPT (sh) as uid 1000 on the login node, in its home."""
        envs = [f"{k}={v}" for k, v in env.items()]
        return run([*self._prefix(), "runuser", "-u", "shoal", "--", "env", "HOME=/home/shoal",
                    "USER=shoal", *envs, "sh", "-c", f"cd /home/shoal && {script}"],
                   check=check, timeout=timeout)

    def user_job(self, script: str, *srun: str, node: str = NODE) -> Completed:
        """SCRIPT as uid 1000 in a job on NODE (a one-task srun from the login node)."""
        args = " ".join(shlex.quote(a) for a in srun)
        return self.user(f"srun -N1 -w {node} {args} sh -c {shlex.quote(script)}")

    def root_job(self, script: str, node: str = NODE) -> Completed:
        """SCRIPT as root in a job on NODE: what root inside a node is (slurmd's child)."""
        return self.root("srun", "-N1", "-w", node, "sh", "-c", script, check=False)

    def shoal_run(self, method: str, command: str = "id -u", nodes: int = 2) -> Completed:
        """`shoal run` as uid 1000 from the login node (the system python3 with the checkout)."""
        return self.user(
            f"/usr/bin/python3 -m shoal.cli.main run --image {IMAGE} --method {method} "
            f"--nodes {nodes} -- sh -c {shlex.quote(command)}",
            PYTHONPATH=f"{REPO}:{VENV_SITE}", SHOAL_STORE="/pfs/store", timeout=300)

    def wait_epilog(self, node: str = NODE, timeout: float = 30) -> None:
        """Until no job area and no mount area is left on NODE (the Epilog ran)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.root("sh", "-c", "ls -A /tmp/shoal /run/shoal/jobs", host=node).stdout
            if not [ln for ln in out.splitlines() if ln and not ln.endswith(":")]:
                return
            time.sleep(0.5)
        raise AssertionError(f"job areas left on {node}: {out}")


@pytest.fixture(scope="module", params=["bind", "sshfs"])
def sec(request: pytest.FixtureRequest, mpihello_in_store: str) -> Iterator[Sec]:
    if os.geteuid() != 0:
        pytest.skip("virtual cluster tests need root")
    storage = str(request.param)
    name = SESSION_CLUSTER[:7] + ("sb" if storage == "bind" else "ss")
    with manager.booted(ClusterConfig(name=name, nodes=2, storage=storage)) as res:
        yield Sec(name, storage, res.state.nodes)


def test_1_planted_symlink_is_not_followed_by_the_prolog(sec: Sec) -> None:
    """Attack 1: plant /tmp/shoal/<next job> -> /etc, let the Prolog chown and mount onto it."""
    before = sec.root("sha256sum", "/etc/passwd", host=NODE).stdout
    sec.user_job("mkdir -p /tmp/shoal; for i in 1 2 3; do "
                 "ln -s /etc /tmp/shoal/$((SLURM_JOB_ID + i)); done; true")
    out = sec.user_job("stat -c '%F %u' /tmp/shoal/$SLURM_JOB_ID; echo root::0:0::/:/bin/sh "
                       ">> /etc/passwd", f"--comment=shoal-stage=squashfs-kernel:{IMAGE}")
    # the job's area is a fresh directory of its own, whatever was planted
    assert out.stdout.splitlines()[0] == "directory 1000", out.stdout + out.stderr
    assert "Permission denied" in out.stderr
    assert sec.root("stat", "-c", "%u", "/etc", host=NODE).stdout.strip() == "0"
    assert sec.root("sha256sum", "/etc/passwd", host=NODE).stdout == before
    assert sec.root("stat", "-c", "%u %a", "/tmp/shoal", host=NODE).stdout.strip() == "0 755"


def test_2_supervisord_is_not_reachable_by_users(sec: Sec) -> None:
    """Attack 2: XML-RPC to a node's supervisord (stopProcess slurmd, then take its port)."""
    probe = ("import socket, sys\n"
             "s = socket.socket()\n"
             "s.settimeout(5)\n"
             "print(s.connect_ex((sys.argv[1], 9001)))\n")
    out = sec.user(f"python3 -c {shlex.quote(probe)} {NODE}")
    assert out.stdout.strip() != "0", "supervisord listens on the cluster network"
    sock = sec.user_job("python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); "
                        "s.connect('/run/supervisor.sock')\"")
    assert sock.returncode != 0 and "Permission denied" in sock.stderr
    # the admin's path (host -> /proc/<pid 1>/root/run/supervisor.sock) still works
    from shoal.cluster.status import supervisor_of

    state = ClusterDir(sec.name).load()
    assert {p.name: p.state for p in supervisor_of(state, NODE).programs()}["slurmd"] == "RUNNING"


def test_3_epilog_does_not_unmount_what_a_symlink_points_to(sec: Sec) -> None:
    """Attack 3: /tmp/shoal/<job> (or an entry in it) -> /pfs; the Epilog unmounted /pfs."""
    sec.user_job("ln -s /pfs /tmp/shoal/$SLURM_JOB_ID/img; ln -s /etc/slurm /tmp/shoal/$SLURM_JOB_ID/x;"
                 " mkdir -p /tmp/shoal; ln -sfn /pfs /tmp/shoal/$SLURM_JOB_ID; true",
                 f"--comment=shoal-stage=squashfuse:{IMAGE}")
    sec.wait_epilog()
    targets = {ln.split()[4] for ln in
               sec.root("cat", "/proc/self/mountinfo", host=NODE).stdout.splitlines()}
    assert {"/pfs", "/home", "/etc/slurm", "/etc/munge"} <= targets
    assert sec.root("test", "-f", "/etc/slurm/slurm.conf", host=NODE, check=False).returncode == 0
    assert sec.user("srun -N1 -w node1 true").returncode == 0  # the node still runs jobs


def test_4_study_as_root_does_not_follow_a_users_symlink_in_pfs(sec: Sec, tmp_path: Path) -> None:
    """Attack 4: /pfs/shoal-study -> elsewhere; `shoal study run` (root) made directories there."""
    victim = tmp_path / "victim"
    victim.mkdir()
    os.chmod(tmp_path, 0o755)
    out = sec.user(f"rm -rf /pfs/shoal-study; ln -s {victim} /pfs/shoal-study && echo planted")
    # /pfs is root's now (users write in /pfs/users/NAME): the plant itself is refused. The study's
    # own guard is tested still, with the link put there as the user once could.
    assert "planted" not in out.stdout and "Permission denied" in out.stderr
    sec.root("sh", "-c", f"rm -rf /pfs/shoal-study; ln -s {victim} /pfs/shoal-study")
    spec = tmp_path / "s.toml"
    spec.write_text(f'[study]\nname = "sec"\nrepetitions = 1\n[cluster]\nkind = "virtual"\n'
                    f'name = "{sec.name}"\nnodes = 2\n[matrix]\nimages = ["{IMAGE}"]\nmethods = ["untar"]\n'
                    'workloads = ["catwalk"]\nnode_counts = [1]\n')
    res = run([str(REPO / ".venv/bin/shoal"), "study", "run", str(spec), "--out",
               str(tmp_path / "out")], check=False, timeout=120)
    try:
        assert res.returncode != 0 and "shoal-study" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        assert list(victim.iterdir()) == []
    finally:
        sec.root("rm", "-f", "/pfs/shoal-study")


def test_5_login_node_has_its_own_tmp_and_sees_no_other_cluster(sec: Sec) -> None:
    """Attack 5: write the host's /tmp; read every cluster's home/shoal/.ssh/id_ed25519."""
    marker = f"shoal-sec-{os.getpid()}-{sec.storage}"
    sec.user(f"echo x > /tmp/{marker}; echo x > /var/tmp/{marker}; echo x > /dev/shm/{marker}")
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not Path(d, marker).exists()
    assert sec.user("ls /var/lib/shoal/clusters").stdout.split() == [sec.name]
    assert sec.user(f"ls /var/lib/shoal/clusters/{sec.name}").stdout.split() == ["ctl"]
    assert sec.user("ls /root").returncode != 0
    # the host's /etc is not writable even by root on the login node
    assert sec.root("touch", "/etc/shoal-sec-probe", check=False).returncode != 0
    # what a user starts from stays reachable: the checkout (cwd of `shoal cluster exec`)
    assert sec.user(f"test -r {REPO}/pyproject.toml").returncode == 0


def test_store_and_agent_are_root_only(sec: Sec) -> None:
    """Replace a store image or the node agent root runs (on sshfs every node wrote as root)."""
    agents = sec.root("sh", "-c", "ls /pfs/store/.shoal/agent-*.pyz", host=NODE).stdout.split()
    assert agents
    digest = hashlib.sha256(Path(f"/var/lib/shoal/store/.shoal/{Path(agents[0]).name}").read_bytes())
    sqfs = f"/pfs/store/{IMAGE}/{IMAGE}.sqfs"
    attack = (f"cp /dev/null {agents[0]}; cp /dev/null {sqfs}; touch /pfs/store/{IMAGE}/x; "
              f"mkdir /pfs/store/evil; mv {sqfs} {sqfs}.old; true")
    for out in (sec.user_job(attack), sec.root_job(attack), sec.user(attack)):
        # every one of the five refused (EACCES, EROFS; sshfs on the read-only export: EPERM)
        assert out.stderr.count("cannot") == 5, out.stderr
    assert hashlib.sha256(
        Path(f"/var/lib/shoal/store/.shoal/{Path(agents[0]).name}").read_bytes()).digest() == \
        digest.digest()
    assert not Path(f"/var/lib/shoal/store/{IMAGE}/x").exists()
    assert not Path("/var/lib/shoal/store/evil").exists()


def test_user_key_opens_no_root_account(sec: Sec) -> None:
    """The user's ssh key was root's: `ssh root@node1` as `shoal` gave root on every node."""
    opts = "-o BatchMode=yes -o ConnectTimeout=5"
    assert sec.user(f"ssh {opts} {NODE} true").returncode == 0
    assert sec.user(f"ssh {opts} root@{NODE} true").returncode != 0
    assert sec.user(f"ssh {opts} root@ctl true").returncode != 0
    if sec.storage == "sshfs":
        out = sec.user(f"echo ls | sftp {opts} -b - root@storage")
        assert out.returncode != 0


def test_node_root_cannot_change_the_host(sec: Sec) -> None:
    """Root in a node: core_pattern, a fresh /proc, a host disk, a kernel module, a devpts."""
    probe = r"""
import ctypes, errno, os
def tried(what, f):
    try:
        f()
        print(what, "DONE")
    except OSError as e:
        print(what, "refused", errno.errorcode.get(e.errno, e.errno))
def core():
    with open("/proc/sys/kernel/core_pattern", "w") as f:
        f.write("|/tmp/evil")
def disk():
    name = open("/proc/partitions").read().split()[7]
    os.close(os.open("/dev/" + name, os.O_RDONLY))
libc = ctypes.CDLL(None, use_errno=True)
def module():
    if libc.syscall(175, b"\0" * 64, ctypes.c_ulong(64), b"") != 0:  # init_module
        raise OSError(ctypes.get_errno(), "init_module")
def proc():
    os.makedirs("/tmp/p", exist_ok=True)
    if libc.mount(b"proc", b"/tmp/p", b"proc", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "mount")
def sysrq():
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("h")
for what, f in (("core_pattern", core), ("disk", disk), ("module", module), ("proc", proc),
                ("sysrq", sysrq)):
    tried(what, f)
"""
    out = sec.root_job(f"python3 -c {shlex.quote(probe)}")
    results = dict(ln.split(" ", 1) for ln in out.stdout.splitlines())
    assert set(results) == {"core_pattern", "disk", "module", "proc", "sysrq"}, out.stderr
    assert all(r.startswith("refused") for r in results.values()), results
    assert "|/tmp/evil" not in Path("/proc/sys/kernel/core_pattern").read_text()
    bnd = sec.root_job("grep CapBnd /proc/self/status").stdout.split()[-1]
    assert not int(bnd, 16) & (1 << 21)  # no CAP_SYS_ADMIN


def test_broker_acts_only_on_what_slurm_vouches_for(sec: Sec) -> None:
    """Node root asks the broker to mount for a job that does not run on its node; a user asks
    it to mount a file of its own, or for someone else's job."""
    hold = sec.root("sbatch", "--parsable", "-N1", "-w", "node2", "-o", "/dev/null",
                    f"--comment=shoal-stage=squashfs-kernel:{IMAGE}", "--wrap", "sleep 60")
    job = hold.stdout.strip().split(";")[0]
    try:
        ask = ("import json, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
               "s.sendall(json.dumps({'op': sys.argv[2], 'job': sys.argv[3], 'image': 'mpihello'})"
               ".encode() + b'\\n'); print(s.recv(4096).decode())")
        out = sec.root_job(f"python3 -c {shlex.quote(ask)} /run/shoal/broker.sock mount {job}")
        assert '"ok": false' in out.stdout and "does not run on node1" in out.stdout
        # the user socket: uid 1000 for root's job on node2, from node2
        out = sec.user_job(f"python3 -c {shlex.quote(ask)} /run/shoal/broker-user.sock "
                           f"mount-local {job}", "--overlap", node="node2")
        assert '"ok": false' in out.stdout, out.stdout + out.stderr
    finally:
        sec.root("scancel", job)
    for bad in ("../../etc", "nope", f"{IMAGE}/x"):
        sec.user_job("true", f"--comment=shoal-stage=squashfs-kernel:{bad}")
    assert "squashfs" not in sec.root("cat", "/proc/self/mountinfo", host=NODE).stdout


@pytest.mark.parametrize("method", ["squashfs-kernel", "squashfuse", "sbcast-squashfs",
                                    "bcast-squashfs", "untar", "sbcast", "bcast", "shared-dir"])
def test_every_method_as_uid_1000(sec: Sec, method: str) -> None:
    """The redesigned privileged path: a user gets every method, mounts included."""
    if sec.storage == "sshfs" and method not in ("squashfs-kernel", "squashfuse", "bcast-squashfs"):
        pytest.skip("the copy methods do not depend on the storage's permissions")
    out = sec.shoal_run(method, "id -u; touch /x 2>/dev/null && echo WROTE-IMAGE; true")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.count("1000") >= 2 and "WROTE-IMAGE" not in out.stdout
    assert "Traceback" not in out.stderr
    sec.wait_epilog()
    assert "squashfs" not in sec.root("cat", "/proc/self/mountinfo", host=NODE).stdout
