"""The storage host of a virtual cluster (`storage = "sshfs"`): shared /pfs across the emulated network.

With `storage = "bind"` every host of the cluster bind-mounts the host's pfs directory: shared, but
reads cost nothing on the network. With `storage = "sshfs"` a `storage` host (own netns on the
cluster bridge at Addressing.storage, its link shaped like every other one; own mount/uts/pid
namespaces) runs the host's sshd, SFTP only, chrooted into an export tree that holds the cluster's
pfs directory with the image store bound at pfs/store. The controller and every node mount it at
/pfs with sshfs from their init scripts, so every byte read from /pfs crosses the storage host's
link and the reader's link, as on NFS or Lustre (no kernel NFS or 9p on these machines).

Per-user ownership: SFTP creates files as the session's user, so one root session would make
root the owner of everything a user writes (an `all_squash` to root, where a user's file looks
like root's own). So /pfs itself is root's (0755) and each cluster user has a directory of its own,
/pfs/users/NAME, which every host mounts a second time through an SFTP session *as that user*:
what the user (or root in its job) writes there is the user's on the storage host and on every
host, as on an NFS export with sec=sys. The storage host has its own passwd (the cluster's
users) and reads authorized keys from its own /run.

The storage host also runs an OCI registry (Debian's docker-registry, distribution 2.8) for the
`registry` distribution method, both under supervisord (PID 1 of the storage host, no control
socket): one instance read-only on the cluster network (storage:5000: any cluster member can pull
what the store holds, which every user can read on /pfs/store anyway; nobody can write), and one
writable instance on the storage host's loopback (127.0.0.1:5001), reachable only by entering its
network namespace as root on the host, which is how `push_image` fills it. Both share one
filesystem root in the cluster's state dir, so what the admin pushes is what the nodes pull.

This module owns: the storage host's sshd_config, registry configs and supervisord.conf (its init
script is shoal/cluster/files/storage-init.sh), the sshfs mount script the
controller and nodes run, and the files they need (keys, known_hosts) in the cluster's state dir.
The manager (shoal/cluster/manager.py) creates the netns and spawns the storage host.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from shoal.cluster import scripts
from shoal.cluster.controller import with_user
from shoal.cluster.netns import is_alive
from shoal.cluster.secrets import SHOAL_UID, SHOAL_USER, STORAGE_KEY
from shoal.cluster.slurmconf import Addressing
from shoal.cluster.state import ClusterDir
from shoal.errors import ClusterError, DependencyError

STORAGE_PROGRAMS = ["sshd", "sshfs", "fusermount3", "supervisord", "docker-registry"]
SSHD = "/usr/sbin/sshd"
# Where the pfs tree is seen inside the sshd chroot; the nodes mount storage:/pfs.
EXPORT_PFS = "/pfs"
SSH_PORT = 22
# One cipher for every mount: AES-GCM runs on AES-NI and costs the least CPU per byte on this
# kind of machine, where ssh/sshd share two cores with everything else of the cluster.
CIPHER = "aes128-gcm@openssh.com"
LISTEN_TIMEOUT = 15.0
REGISTRY = "/usr/bin/docker-registry"
REGISTRY_PORT = 5000  # read-only, on the cluster network (shoal.staging.oci.PUBLIC_PORT)
REGISTRY_ADMIN_PORT = 5001  # writable, on the storage host's loopback only (oci.ADMIN_PORT)
PUSH_TIMEOUT = 600.0
# Users with a directory of their own on /pfs, mounted through their own SFTP session
# (name, uid): the cluster has one user.
PFS_USERS = ((SHOAL_USER, SHOAL_UID),)
# Where the storage host's sshd finds each user's authorized keys (%u): its own tmpfs /run,
# root-owned all the way down, as StrictModes wants for a key file read with the user's uid.
KEYS_DIR = "/run/shoal-keys"
# Who may log in to the storage host's sshd (SFTP only): root's session serves /pfs, each user's
# its own directory.
LOGIN_USERS = ("root", *(name for name, _ in PFS_USERS))


def user_dir(pfs: Path | str, user: str) -> Path:
    """A cluster user's own directory on /pfs (or on the host's pfs dir)."""
    return Path(pfs) / "users" / user


def make_user_dirs(pfs: Path) -> None:
    """/pfs is root's; /pfs/users/NAME is the user's (0700), on bind and sshfs storage alike."""
    os.chmod(pfs, 0o755)
    (pfs / "users").mkdir(mode=0o755, exist_ok=True)
    os.chmod(pfs / "users", 0o755)
    for name, uid in PFS_USERS:
        d = user_dir(pfs, name)
        d.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(d)
        if (st.st_uid, st.st_gid) != (uid, uid):
            os.lchown(d, uid, uid)
        os.chmod(d, 0o700)

@dataclass(frozen=True)
class StorageFiles:
    """Paths of the storage host's files inside one cluster's state directory."""

    root: Path
    secrets: Path

    @classmethod
    def of(cls, cd: ClusterDir) -> StorageFiles:
        return cls(cd.root / "storage", cd.secrets)

    @property
    def init_script(self) -> Path:
        return self.root / "storage-init.sh"

    @property
    def sshd_config(self) -> Path:
        return self.root / "sshd_config"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def mount_script(self) -> Path:
        return self.root / "mount-pfs.sh"

    @property
    def registry_root(self) -> Path:
        return self.root / "registry"

    @property
    def registry_config(self) -> Path:
        return self.root / "registry.yml"

    @property
    def registry_admin_config(self) -> Path:
        return self.root / "registry-admin.yml"

    @property
    def supervisord_conf(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def passwd(self) -> Path:
        return self.root / "passwd"

    @property
    def group(self) -> Path:
        return self.root / "group"

    @property
    def host_key(self) -> Path:
        return self.secrets / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.secrets / STORAGE_KEY

    @property
    def authorized_keys(self) -> Path:
        return self.secrets / "storage_authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.secrets / "storage_known_hosts"


def check_prerequisites() -> None:
    missing = [p for p in STORAGE_PROGRAMS if shutil.which(p, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        raise DependencyError(
            f"storage = \"sshfs\" needs: {' '.join(missing)}",
            "install them (`apt-get install openssh-server sshfs fuse3`, or `make setup`)",
        )
    if not Path("/dev/fuse").exists():
        raise DependencyError("storage = \"sshfs\" needs /dev/fuse", "load the fuse module: `modprobe fuse`")


def render_registry_config(listen: str, root: Path, *, readonly: bool, secret: str) -> str:
    """docker-registry (distribution 2.8) config: filesystem storage at root, no cache layer
    (two instances share the root; a blob-descriptor cache could answer for the other one)."""
    ro = "true" if readonly else "false"
    kind = "read-only" if readonly else "writable"
    return f"""# Generated by shoal (shoal/cluster/storage.py): {kind} instance
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: false
  maintenance:
    uploadpurging:
      enabled: false
    readonly:
      enabled: {ro}
http:
  addr: {listen}
  secret: {secret}
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: false
"""


def render_supervisord_conf(files: StorageFiles, logs: Path, sshd: bool) -> str:
    """The storage host's PID 1: sshd (sshfs storage) and the two registry instances; no control
    socket (nothing listens for supervisorctl), logs in the cluster's log dir."""
    out = f"""; Generated by shoal (shoal/cluster/storage.py): PID 1 of the storage host.
[supervisord]
nodaemon=true
user=root
logfile={logs}/storage-supervisord.log
pidfile=/run/storage-supervisord.pid
childlogdir={logs}

"""
    if sshd:
        out += f"""[program:sshd]
command={SSHD} -D -e -f {files.sshd_config}
priority=10
autorestart=true
stdout_logfile={logs}/storage-sshd.log
redirect_stderr=true

"""
    for name, conf in (("registry", files.registry_config),
                       ("registry-admin", files.registry_admin_config)):
        out += f"""[program:{name}]
command={REGISTRY} serve {conf}
priority=20
autorestart=true
stdout_logfile={logs}/storage-{name}.log
redirect_stderr=true

"""
    return out


def prepare_registry(files: StorageFiles, listen_ip: str) -> None:
    files.registry_root.mkdir(parents=True, exist_ok=True)
    os.chmod(files.registry_root, 0o700)
    secret = secrets.token_hex(16)  # http.secret: signs upload state between requests
    _write(files.registry_config, render_registry_config(
        f"{listen_ip}:{REGISTRY_PORT}", files.registry_root, readonly=True, secret=secret), 0o600)
    _write(files.registry_admin_config, render_registry_config(
        f"127.0.0.1:{REGISTRY_ADMIN_PORT}", files.registry_root, readonly=False, secret=secret),
        0o600)


def render_sshd_config(listen: str, files: StorageFiles) -> str:
    """sshd_config of the storage host: key-only logins of root and the cluster users, SFTP only,
    chrooted to the export."""
    return f"""# Generated by shoal: the storage host's sshd serves the cluster's /pfs, SFTP only.
ListenAddress {listen}:{SSH_PORT}
HostKey {files.host_key}
PidFile none
# one file per user (storage-init.sh copies them to its /run): read with that user's uid
AuthorizedKeysFile {KEYS_DIR}/%u
AllowUsers {" ".join(LOGIN_USERS)}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
ChrootDirectory {files.export}
# -u 0000: the client kernel already applied the writer's umask; do not mask a second time.
ForceCommand internal-sftp -u 0000
Subsystem sftp internal-sftp -u 0000
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
PrintMotd no
UseDNS no
# Every node of a large cluster mounts at boot at the same moment: do not drop them.
MaxStartups 1024
LogLevel INFO
"""


def render_authorized_keys(client_pub: str, subnet: str) -> str:
    """The cluster key may log in only from the cluster subnet, and gets nothing but SFTP."""
    return f'restrict,from="{subnet}" {client_pub.strip()}\n'


def sshfs_argv(server: str, mountpoint: str, files: StorageFiles, user: str = "root",
               remote: str = EXPORT_PFS) -> list[str]:
    """The sshfs command the controller and each node run (as root, before the node's pivot_root).

    Choices, and why:
    - allow_other: jobs run as uid 1000 (and charliecloud in user namespaces) must see /pfs, not
      only root who mounted it.
    - default_permissions: the client kernel checks every access against the owner and mode the
      server reports, as NFS does for sec=sys. Without it sshfs let any local user do whatever
      the SFTP session (root on the storage host) may: uid 1000 could replace store images and
      the node agent root runs (docs/SECURITY.md). SFTP creates files as the session's user, so
      users write only in /pfs/users/NAME, mounted through their own session (module doc). The
      store is exported read-only besides (storage-init.sh).
    - no kernel_cache/auto_cache: the page cache of a file is dropped at every open, so each run
      of a benchmark reads over the network (repetitions stay independent without a host-wide
      drop_caches that would disturb everyone else) and nodes never see stale data.
    - dcache_timeout=1: sshfs' own attribute/name cache (the analogue of NFS READDIRPLUS +
      actimeo) is kept as short as the kernel's attr/entry timeouts (1 s), so a file written on
      one host is seen by the others within a second, instead of sshfs' default 20 s.
    - no reconnect: the storage host lives exactly as long as the cluster. A dropped connection
      means it died, which should fail loudly (ENOTCONN) rather than be hidden; and after the
      node's pivot_root the host's ssh binary and key path are gone, so a reconnect could not
      run anyway.
    - no_contain_symlinks: Debian's sshfs rejects absolute symlink targets by default, which
      breaks every unpacked image tree (absolute links are common); the server is ours.
    - aes128-gcm, Compression=no: cheapest CPU per byte; image data is mostly compressed already
      and the network cost must be what the link shaping says, not what zlib makes of it.
    - -F none: nothing from the host's ssh configuration leaks into the cluster.
    """
    opts = [
        "allow_other",
        "default_permissions",
        "no_contain_symlinks",
        "dcache_timeout=1",
        f"IdentityFile={files.client_key}",
        "IdentitiesOnly=yes",
        f"UserKnownHostsFile={files.known_hosts}",
        "GlobalKnownHostsFile=/dev/null",
        "StrictHostKeyChecking=yes",
        "BatchMode=yes",
        f"Ciphers={CIPHER}",
        "Compression=no",
        "ConnectTimeout=10",
        "LogLevel=ERROR",
    ]
    return ["sshfs", "-F", "none", f"{user}@{server}:{remote}", mountpoint, "-o", ",".join(opts)]


def render_mount_script(server: str, files: StorageFiles, attempts: int = 5) -> str:
    """sh script: `mount-pfs.sh MOUNTPOINT`: /pfs as root, then each user's directory through
    the user's own session; each retried a few times (boot-time races), then fail."""
    mounts = [(sshfs_argv(server, "MOUNTPOINT", files), "")]
    for name, _ in PFS_USERS:
        sub = f"/{user_dir('', name)}"
        mounts.append((sshfs_argv(server, "MOUNTPOINT", files, name, f"{EXPORT_PFS}{sub}"), sub))
    body = ""
    for argv, sub in mounts:
        cmd = " ".join(f'"$1"{sub}' if a == "MOUNTPOINT" else shlex.quote(a) for a in argv)
        body += f"""i=1
until {cmd}; do
    if [ "$i" -ge {attempts} ]; then
        echo "shoal: sshfs mount of {argv[3]} on $1{sub} failed {attempts} times" >&2
        exit 1
    fi
    i=$((i + 1))
    sleep 0.3
done
"""
    return f"""#!/bin/sh
# Mount /pfs from the storage host {server} (generated by shoal/cluster/storage.py).
# sshfs daemonizes: the daemon stays in the caller's namespaces and dies with them.
set -u
{body}"""


def prepare(cd: ClusterDir, addr: Addressing, store: Path, tbf: str) -> tuple[dict[str, str], Path]:
    """Write the storage host's files; return its init environment and the nodes' mount script."""
    check_prerequisites()
    files = StorageFiles.of(cd)
    files.export.mkdir(parents=True, exist_ok=True)
    os.chmod(files.root, 0o755)
    os.chmod(files.export, 0o755)
    client_pub = (cd.secrets / f"{STORAGE_KEY}.pub").read_text()
    host_pub = " ".join((cd.secrets / "ssh_host_ed25519_key.pub").read_text().split()[:2])
    _write(files.authorized_keys, render_authorized_keys(client_pub, addr.subnet), 0o600)
    # the storage host's own passwd/group: sshd needs the cluster users by name
    _write(files.passwd, with_user(Path("/etc/passwd").read_text(), "passwd"), 0o644)
    _write(files.group, with_user(Path("/etc/group").read_text(), "group"), 0o644)
    _write(files.known_hosts, f"{addr.storage} {host_pub}\n", 0o644)
    _write(files.sshd_config, render_sshd_config(addr.storage, files), 0o600)
    scripts.install(scripts.STORAGE_INIT, files.init_script, 0o755)
    _write(files.mount_script, render_mount_script(addr.storage, files), 0o755)
    prepare_registry(files, addr.storage)
    _write(files.supervisord_conf, render_supervisord_conf(files, cd.logs, sshd=True), 0o600)
    env = {
        "SHOAL_IP": addr.storage,
        "SHOAL_TBF": tbf,
        "SHOAL_PFS": str(cd.pfs),
        "SHOAL_STORE": str(store),
        "SHOAL_EXPORT": str(files.export),
        "SHOAL_SSHD_CONFIG": str(files.sshd_config),
        "SHOAL_STORAGE_SUPERVISORD": str(files.supervisord_conf),
        "SHOAL_AUTHORIZED_KEYS": str(files.authorized_keys),
        "SHOAL_KEYS_DIR": KEYS_DIR,
        "SHOAL_KEY_USERS": " ".join(LOGIN_USERS),
        "SHOAL_PASSWD": str(files.passwd),
        "SHOAL_GROUP": str(files.group),
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    return env, files.mount_script


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    os.chown(path, 0, 0)


def listening(pid: int, port: int = SSH_PORT) -> bool:
    """Whether a TCP socket listens on `port` in the network namespace of process `pid`.

    /proc/PID/net/tcp shows the sockets of that process's netns, so the host can watch the
    storage host come up without entering its namespace.
    """
    try:
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    want = f":{port:04X}"
    for line in lines:
        f = line.split()
        if len(f) > 3 and f[1].endswith(want) and f[3] == "0A":  # 0A = LISTEN
            return True
    return False


def wait_listening(pid: int, console: Path, timeout: float = LISTEN_TIMEOUT,
                   ports: tuple[int, ...] = (SSH_PORT, REGISTRY_PORT, REGISTRY_ADMIN_PORT)) -> None:
    """Block until the storage host's sshd and registries listen; fail with its console tail if
    it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(listening(pid, p) for p in ports):
            return
        if not is_alive(pid):
            break
        time.sleep(0.02)
    tail = console.read_text(errors="replace").strip().splitlines()[-3:] if console.exists() else []
    raise ClusterError(
        f"the storage host did not start sshd and the registry: {' | '.join(tail) or 'no output'}",
        f"see {console}",
    )




def push_image(netns_name: str, store: Path, agent: Path, image: str) -> dict[str, object]:
    """Push IMAGE from the store into the cluster's registry (idempotent): the agent bundle's
    `registry-push`, run with the host's python3 in the storage host's network namespace, to the
    writable instance on its loopback. Returns the agent's record (pushed, seconds, tag)."""
    import json

    from shoal.runner import run

    done = run(["nsenter", f"--net=/run/netns/{netns_name}", "--", "/usr/bin/python3", "-I",
                str(agent), "--store", str(store), "registry-push", "--image", image,
                "--registry", f"http://127.0.0.1:{REGISTRY_ADMIN_PORT}"],
               timeout=PUSH_TIMEOUT, check=False, what=f"pushing {image} to the registry")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    rec: dict[str, object] = json.loads(lines[-1]) if lines else {}
    if done.returncode != 0 or not rec.get("ok"):
        raise ClusterError(
            f"pushing {image} to the cluster's registry failed: "
            f"{rec.get('error') or done.stderr.strip()[-300:] or 'no output'}",
            "is the storage host up? (shoal cluster status; the cluster needs storage = \"sshfs\")",
        )
    return rec
