"""storage = "sshfs": /pfs served by the storage host, read across the shaped cluster network.

Boots its own 2-node cluster `sfs` on eth10g (1 Gbit/s per link) and takes it down at the end,
also when a test fails; the last test checks that `down` leaves nothing (netns incl. the storage
host's, bridge, veths, FUSE and other mounts, processes, state dir).

Byte counters are read from /proc/net/dev inside the node, not /sys/class/net/eth0/statistics:
a node's /sys is a bind of the host's sysfs, whose net class shows the host's interfaces (sysfs
is tied to the netns that mounted it), so there `eth0` is the machine's NIC, not the node's.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shoal.cluster import manager
from shoal.cluster.config import NETWORK_PROFILES, validate
from shoal.cluster.state import ClusterDir, ClusterState
from shoal.cluster.topology import Addressing
from shoal.paths import store_root
from shoal.runner import run

pytestmark = pytest.mark.cluster
NAME = "sfs"
NODES = ["node1", "node2"]
SHOAL = [sys.executable, "-m", "shoal.cli.main"]
MB = 1_000_000
LINK_MBYTE_S = (NETWORK_PROFILES["eth10g"].rate_mbit or 0) / 8  # 125 MB/s


def shoal_exec(node: str | None, *cmd: str, timeout: float = 120) -> str:
    where = ["--node", node] if node else []
    return run([*SHOAL, "cluster", "exec", "--name", NAME, *where, "--", *cmd], timeout=timeout).stdout


def leftovers(state: ClusterState) -> list[str]:
    left = [f"netns {h}" for h in [*state.all_hosts(), "storage"]
            if Path(f"/run/netns/{state.netns(h)}").exists()]
    for dev in [state.bridge, *(state.host_veth(h) for h in [*state.all_hosts(), "storage"])]:
        if Path(f"/sys/class/net/{dev}").exists():
            left.append(f"link {dev}")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if f"/clusters/{NAME}/" in line or f"{Addressing(state.index).storage}:" in line:
            left.append(f"mount {line.split()[4]}")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            blob = Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if f"clusters/{NAME}/".encode() in blob or f"shoal-{NAME}-".encode() in blob:
            left.append(f"process {pid}")
    if ClusterDir(NAME).root.exists():
        left.append("state dir")
    return left


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterState]:
    cfg = validate({"name": NAME, "nodes": len(NODES), "network": "eth10g", "storage": "sshfs"})
    with manager.booted(cfg) as res:
        yield res.state
    assert leftovers(res.state) == []


def test_state_records_storage(cluster: ClusterState) -> None:
    assert cluster.storage == "sshfs"
    assert cluster.network["storage"] == "sshfs"
    assert cluster.network["name"] == "eth10g"
    assert cluster.config["storage"] == "sshfs"
    assert cluster.storage_pid > 0 and Path(f"/proc/{cluster.storage_pid}").exists()


@pytest.mark.parametrize("host", [None, *NODES])
def test_pfs_is_sshfs_from_the_storage_host(cluster: ClusterState, host: str | None) -> None:
    mounts = shoal_exec(host, "cat", "/proc/mounts").splitlines()
    pfs = [m.split() for m in mounts if m.split()[1] == "/pfs"]
    want = f"root@{Addressing(cluster.index).storage}:/pfs"
    assert pfs and pfs[-1][0] == want and pfs[-1][2] == "fuse.sshfs"
    assert not [m for m in mounts if m.split()[1] == "/pfs/store"]  # the store comes with /pfs
    # /pfs/store is the host's image store, seen through the storage host's bind.
    assert shoal_exec(host, "ls", "-A", "/pfs/store").split() == sorted(os.listdir(store_root()))


def test_file_written_on_controller_is_seen_on_every_node(cluster: ClusterState) -> None:
    token = uuid.uuid4().hex
    shoal_exec(None, "sh", "-c", f"echo {token} > /pfs/sfs-{token}.txt")
    # It went to the storage host, i.e. into the cluster's pfs dir on the host.
    assert (ClusterDir(NAME).pfs / f"sfs-{token}.txt").read_text().strip() == token
    for node in NODES:
        assert shoal_exec(node, "cat", f"/pfs/sfs-{token}.txt").strip() == token


def test_cluster_user_owns_what_it_writes_in_its_pfs_dir(cluster: ClusterState) -> None:
    """Per-user ownership across the network: /pfs/users/shoal is mounted through the user's own
    SFTP session, so a file uid 1000 creates there is uid 1000's on the storage host and on every
    host, and the user can write it again; /pfs itself is root's."""
    mine = "/pfs/users/shoal/u-f"
    as_user = ["runuser", "-u", "shoal", "--", "sh", "-c"]
    shoal_exec("node1", *as_user, f"echo from-node1 > {mine}")
    assert shoal_exec("node2", *as_user, f"cat {mine}").split() == ["from-node1"]
    # its own on the storage host (the host's pfs dir) and on every host of the cluster
    assert (ClusterDir(NAME).pfs / "users" / "shoal" / "u-f").stat().st_uid == 1000
    for host in (None, "node2"):
        assert shoal_exec(host, "stat", "-c", "%u %g", mine).split() == ["1000", "1000"]
    # and it writes it again from another node; root in the user's directory writes as the user
    shoal_exec("node2", *as_user, f"echo again >> {mine}")
    shoal_exec("node2", "sh", "-c", "echo by-root > /pfs/users/shoal/r-f")
    assert shoal_exec("node1", "stat", "-c", "%u", "/pfs/users/shoal/r-f").split() == ["1000"]
    # nothing outside its directory: /pfs is root's, and root's files stay root's
    shoal_exec(None, "sh", "-c", "echo root > /pfs/root-f")
    for attack in ("echo x > /pfs/u-new", "echo x >> /pfs/root-f", "rm -f /pfs/root-f"):
        denied = run([*SHOAL, "cluster", "exec", "--name", NAME, "--node", "node2", "--",
                      *as_user, attack], check=False, timeout=60)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, attack
    assert shoal_exec("node1", "cat", "/pfs/root-f").split() == ["root"]


def test_absolute_symlinks_are_kept(cluster: ClusterState) -> None:
    # Unpacked image trees are full of absolute links; Debian's sshfs refuses them by default.
    link = ClusterDir(NAME).pfs / "abs-link"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/hostname")
    assert shoal_exec("node1", "readlink", "/pfs/abs-link").strip() == "/etc/hostname"
    assert shoal_exec("node1", "cat", "/pfs/abs-link").strip() == "node1"  # resolved on the node


def _rx(dev_text: str) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"^\s*eth0:\s*(\d+)", dev_text, re.M)]


def test_reading_50mb_on_a_node_crosses_its_link(cluster: ClusterState) -> None:
    size = 50 * 2**20
    f = ClusterDir(NAME).pfs / "fifty.bin"
    f.write_bytes(os.urandom(size))
    out = shoal_exec("node1", "sh", "-c",
                     "cat /proc/net/dev; cat /pfs/fifty.bin | wc -c; cat /proc/net/dev")
    before, after = _rx(out)
    assert f"\n{size}\n" in out
    assert after - before >= size, f"node1 eth0 received {after - before} bytes for a {size}-byte read"


def _dd(node: str, path: str) -> tuple[float, float, float, float]:
    """Read `path` on `node`: (bytes, dd's seconds, start, end); the stamps are the host clock,
    which every node shares, so reads on several nodes can be put on one time line."""
    out = run([*SHOAL, "cluster", "exec", "--name", NAME, "--node", node, "--", "sh", "-c",
               f"date +%s.%N; dd if={path} of=/dev/null bs=1M; date +%s.%N"], timeout=300)
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.e-]+) s", out.stderr, re.M)
    stamps = out.stdout.split()
    assert m and len(stamps) == 2, (out.stdout, out.stderr)
    return float(m.group(1)), float(m.group(2)), float(stamps[0]), float(stamps[1])


def test_read_throughput_is_bounded_by_the_storage_link(cluster: ClusterState) -> None:
    size = 100 * MB
    (ClusterDir(NAME).pfs / "hundred.bin").write_bytes(os.urandom(size))
    for n in (1, 2):
        with ThreadPoolExecutor(n) as pool:
            reads = list(pool.map(lambda nd: _dd(nd, "/pfs/hundred.bin"), NODES[:n]))
        per_node = [b / s / MB for b, s, _, _ in reads]
        span = max(r[3] for r in reads) - min(r[2] for r in reads)
        aggregate = sum(r[0] for r in reads) / span / MB
        print(f"\nsshfs read of {size // MB} MB on {n} node(s) at once: per node "
              f"{', '.join(f'{r:.1f}' for r in per_node)} MB/s, aggregate {aggregate:.1f} MB/s "
              f"(storage link {LINK_MBYTE_S:.0f} MB/s)")
        # Above the link rate would mean the reads did not go through the shaped storage link
        # (a bind mount reads at memory speed: GB/s). 5 % slack for tbf's burst bucket.
        assert aggregate <= LINK_MBYTE_S * 1.05
        assert max(per_node) <= LINK_MBYTE_S * 1.05
        assert min(per_node) >= 5.0, "sshfs far slower than the link: something is broken"


def _storage_tx(state: ClusterState) -> int:
    """Bytes the storage host sent (its netns, seen through its PID 1's /proc/PID/net/dev)."""
    text = Path(f"/proc/{state.storage_pid}/net/dev").read_text()
    return sum(int(ln.split(":")[1].split()[8]) for ln in text.splitlines()[2:]
               if ":" in ln and ln.split(":")[0].strip() != "lo")


def test_registry_pull_matches_the_store(cluster: ClusterState) -> None:
    """The `registry` method on network storage: docker-registry runs under the storage host's
    supervisord, every node pulls manifest and layer over HTTP, unpacks, and the tree matches the
    store's tree digest; the storage host serves N copies (the N-to-1 load)."""
    import json

    from shoal.staging import driver

    image = "mpihello"
    manifest_path = store_root() / image / "manifest.json"
    if not manifest_path.is_file():
        pytest.skip(f"{image} not in the store: shoal image export {image}")
    manifest = json.loads(manifest_path.read_text())
    size = manifest["sizes"][f"{image}.tar.gz"]
    conf = Path(ClusterDir(NAME).root / "storage" / "supervisord.conf").read_text()
    assert "[program:registry]" in conf and "[program:registry-admin]" in conf
    assert "unix_http_server" not in conf and "inet_http_server" not in conf  # no control socket
    site = driver.site_for(NAME)
    alloc = driver.allocate(site, len(NODES), time_limit="10")
    try:
        # the first staging pushes the image (not timed); measure the load of a second one
        first = driver.distribute(site, alloc, "registry", image, timeout=300)
        assert first.ok, first.failed
        assert first.extra["registry_push"]["ok"]
        driver.cleanup(site, alloc, image)
        tx0 = _storage_tx(cluster)
        result = driver.distribute(site, alloc, "registry", image, verify=True, timeout=300)
        served = _storage_tx(cluster) - tx0
        assert result.ok, result.failed
        assert not result.extra["registry_push"]["pushed"]  # already there: idempotent
        for rec in result.records.values():
            assert rec["verify"]["ok"] and rec["verify"]["digest"] == manifest["tree_digest"]
            assert rec["registry_bytes"] == size and rec["bytes_net_rx"] >= size
            assert rec["stage_cpu_seconds"] > 0 and rec["bytes_net_tx"] > 0
        assert served >= len(NODES) * size  # every node's copy left through the storage link
        # pushing is refused on the cluster network: the public instance is read-only
        out = shoal_exec("node1", "python3", "-c",
                         "import urllib.request as u\n"
                         "r=u.Request('http://storage:5000/v2/shoal/x/blobs/uploads/',"
                         "method='POST')\n"
                         "try: u.urlopen(r)\n"
                         "except Exception as e: print(e)")
        assert "405" in out, out
    finally:
        driver.cleanup(site, alloc, timeout=120, raise_on_left=False)
        driver.release(site, alloc.job)


def test_down_leaves_nothing(cluster: ClusterState) -> None:
    assert leftovers(cluster) != []  # it is really there
    assert manager.down(NAME) == []
    assert leftovers(cluster) == []
