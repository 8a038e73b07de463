# ruff: noqa: UP006, UP035, UP045, B904  (Python 3.6 on the nodes: typing generics; Refused
# carries the whole story, no exception chain)
"""The privileged half of image staging: what root does for a job on a node, and how safely.

STANDARD LIBRARY ONLY, Python 3.6 (it runs in the node agent bundle, in Slurm's Prolog and
Epilog as root, and in shoal's mount broker on the host).

The threat model (docs/SECURITY.md): the job user controls every file it can write (its job
directory under /tmp/shoal, /pfs, /home) and can race root between a check and a use; it cannot
change what slurmctld recorded for its job, nor the admin's image store. So root here

- learns WHAT to mount only from the job record slurmctld vouches for: the job comment
  ``shoal-stage=METHOD:IMAGE`` (slurmd gives it to the Prolog as SLURM_JOB_COMMENT; the broker
  reads it back from slurmctld), and for WHOM from SLURM_JOB_UID/SLURM_JOB_GID;
- accepts only an image of the admin's store: a plain name, every path component root-owned and
  not writable by group or others, regular files opened without following symlinks;
- mounts onto a directory it creates itself under MOUNT_ROOT (/run/shoal/jobs, root-owned 0755,
  never writable by a user), read-only, nosuid, nodev;
- touches a user-writable path (the job's /tmp/shoal/<job>) only through a directory descriptor
  of a root-owned parent (create, chown) or after dropping to the job user's uid (Epilog sweep).

The user side: the job's ``stage`` step finds the Prolog's record in MOUNT_ROOT and reports it; its
cleanup leaves the mount to the Epilog.
"""

import contextlib
import errno
import json
import os
import re
import socket
import stat
import struct
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from shoal import names

MOUNT_ROOT = "/run/shoal/jobs"
# the mount broker's socket inside a node (virtual cluster: node root has no CAP_SYS_ADMIN)
BROKER_SOCKET = "/run/shoal/broker.sock"
# and the one job steps of any user may call (the broker learns the caller's uid from the kernel)
BROKER_USER_SOCKET = "/run/shoal/broker-user.sock"
COMMENT_KEY = "shoal-stage="
# full matches only (\Z, not $: $ accepts a trailing newline)
IMAGE_RE = re.compile(names.IMAGE_NAME_RE.pattern + r"\Z")  # names.py, full match
METHOD_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}\Z")
JOB_RE = re.compile(r"[0-9]{1,12}\Z")
# open(2) flags, spelled once (vermin reads `a | b` as a 3.10 union type)
DIR = os.O_RDONLY | os.O_DIRECTORY  # novermin
DIR_NOFOLLOW = DIR | os.O_NOFOLLOW  # novermin
FILE_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW  # novermin
FILE_NOFOLLOW_NONBLOCK = FILE_NOFOLLOW | os.O_NONBLOCK  # novermin
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW  # novermin


class Refused(Exception):
    """A request root will not act on (the message says why; logged, never a traceback)."""


class Busy(Refused):
    """The broker turned the request away for now (too many at once on this socket)."""


# ---- the request: job comment -----------------------------------------------------------------


def stage_comment(method: str, image: str) -> str:
    """The job comment that asks shoal's Prolog to mount IMAGE with METHOD."""
    if not METHOD_RE.match(method) or not IMAGE_RE.match(image):
        raise Refused(f"bad method or image name: {method!r} {image!r}")
    return f"{COMMENT_KEY}{method}:{image}"


def parse_comment(comment: Optional[str]) -> Optional[Tuple[str, str]]:
    """(method, image) from a job comment, None when it asks for nothing; Refused if malformed."""
    if not comment:
        return None
    words = [w for w in comment.split() if w.startswith(COMMENT_KEY)]
    if not words:
        return None
    if len(words) > 1:
        raise Refused("job comment asks for more than one staging")
    method, sep, image = words[0][len(COMMENT_KEY):].partition(":")
    if not sep or not METHOD_RE.match(method) or not IMAGE_RE.match(image):
        raise Refused(f"malformed staging request in job comment: {words[0]!r}")
    return method, image


def job_id(value: Optional[str]) -> str:
    if not value or not JOB_RE.match(value):
        raise Refused(f"bad job id {value!r}")
    return value


# ---- the admin's store ------------------------------------------------------------------------


def _trusted(st: os.stat_result, what: str, kind: int) -> None:
    if stat.S_IFMT(st.st_mode) != kind:
        kind_name = "directory" if kind == stat.S_IFDIR else "regular file"
        raise Refused(f"{what} is not a {kind_name}")
    if st.st_uid != 0:
        raise Refused(f"{what} is owned by uid {st.st_uid}, not root")
    if st.st_mode & 0o022:
        raise Refused(f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def open_store_file(store: str, image: str, name: str) -> int:
    """An O_RDONLY descriptor of STORE/IMAGE/NAME, every component checked root-owned and not
    group/other-writable, no symlink followed. Raises Refused."""
    if not IMAGE_RE.match(image) or not IMAGE_RE.match(name):
        raise Refused(f"bad store entry {image!r}/{name!r}")
    fd = os.open(store, DIR)
    try:
        _trusted(os.fstat(fd), store, stat.S_IFDIR)
        for comp in (image,):
            nfd = os.open(comp, DIR_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
            _trusted(os.fstat(fd), os.path.join(store, comp), stat.S_IFDIR)
        ffd = os.open(name, FILE_NOFOLLOW_NONBLOCK, dir_fd=fd)
    except OSError as exc:
        raise Refused(f"{os.path.join(store, image, name)}: {exc.strerror}")
    finally:
        os.close(fd)
    try:
        _trusted(os.fstat(ffd), os.path.join(store, image, name), stat.S_IFREG)
    except Refused:
        os.close(ffd)
        raise
    return ffd


def store_manifest(store: str, image: str) -> Dict[str, Any]:
    fd = open_store_file(store, image, "manifest.json")
    with os.fdopen(fd) as f:
        try:
            data = json.load(f)
        except ValueError:
            raise Refused(f"manifest of {image!r} is not JSON")
    if not isinstance(data, dict):
        raise Refused(f"manifest of {image!r} is not an object")
    return data


def store_artifact(store: str, image: str, export: str, default: str) -> str:
    """Path of IMAGE's EXPORT (e.g. "squashfs") in the store, checked; the file name from the
    manifest. Returns the path (under STORE) of a file checked trusted a moment ago."""
    exports = store_manifest(store, image).get("exports")
    name = exports.get(export) if isinstance(exports, dict) else None
    if not isinstance(name, str):
        name = default
    os.close(open_store_file(store, image, name))
    return os.path.join(store, image, name)


# ---- directories root creates -----------------------------------------------------------------


def root_dir(path: str, mode: int = 0o755) -> None:
    """Make PATH (and parents) a root-owned directory not writable by others, or refuse.

    Parents are created when missing; an existing component must already be a root-owned real
    directory (no symlink) that no user can write: nothing a user planted is followed.
    """
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", DIR)
    try:
        cur = ""
        for comp in parts:
            cur += "/" + comp
            with contextlib.suppress(FileExistsError):
                os.mkdir(comp, mode, dir_fd=fd)
            nfd = os.open(comp, DIR_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            if st.st_uid != 0 or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
                raise Refused(f"{cur} is not a root-owned directory (uid {st.st_uid}, "
                              f"mode {stat.S_IMODE(st.st_mode):o})")
        st = os.fstat(fd)
        if st.st_mode & 0o022:
            raise Refused(f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o})")
    except OSError as exc:
        raise Refused(f"{path}: {exc.strerror}")
    finally:
        os.close(fd)


def _rmtree_at(parent_fd: int, name: str) -> None:
    """Remove PARENT/NAME without following symlinks and without descending into another file
    system (a mount the user left): every step through a directory descriptor."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    if st.st_dev != os.fstat(parent_fd).st_dev:
        raise OSError(errno.EBUSY, "a file system is mounted there", name)
    fd = os.open(name, DIR_NOFOLLOW, dir_fd=parent_fd)
    try:
        for entry in os.listdir(fd):
            _rmtree_at(fd, entry)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def user_job_dir(stage_root: str, job: str, uid: int, gid: int) -> str:
    """Create STAGE_ROOT/JOB for the job's user: STAGE_ROOT root-owned 0755 (nothing a user
    planted there survives), the job directory made fresh by root and handed over by fd."""
    job = job_id(job)
    parent = os.path.dirname(stage_root.rstrip("/")) or "/"
    base = os.path.basename(stage_root.rstrip("/"))
    pfd = os.open(parent, DIR)
    try:
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not (stat.S_ISDIR(st.st_mode) and st.st_uid == 0
                                   and not st.st_mode & 0o022):
            # a user's /tmp/shoal (or a symlink in its place): move it out of the way; /tmp is
            # sticky, root may rename any entry, and rename never follows the link
            os.rename(base, f".{base}-user-{st.st_uid}-{int(time.time() * 1e6)}",
                      src_dir_fd=pfd, dst_dir_fd=pfd)
        with contextlib.suppress(FileExistsError):
            os.mkdir(base, 0o755, dir_fd=pfd)
        sfd = os.open(base, DIR_NOFOLLOW, dir_fd=pfd)
    finally:
        os.close(pfd)
    try:
        st = os.fstat(sfd)
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise Refused(f"{stage_root} is not root-owned 0755")
        os.fchmod(sfd, 0o755)
        # a directory of an earlier job with the same id (only root can have made it)
        _rmtree_at(sfd, job)
        os.mkdir(job, 0o700, dir_fd=sfd)
        jfd = os.open(job, DIR_NOFOLLOW, dir_fd=sfd)
        try:
            os.fchown(jfd, uid, gid)
            os.fchmod(jfd, 0o700)
        finally:
            os.close(jfd)
    finally:
        os.close(sfd)
    return os.path.join(stage_root, job)


def remove_user_job_dir(stage_root: str, job: str, uid: int, gid: int,
                        sweep: Callable[[str], List[str]]) -> List[str]:
    """Epilog: undo the job's user area. Unmounting and deleting inside it run as the job's
    user (anything the user made there, symlinks included, can only lead where the user could
    go anyway); root then removes the emptied directory through the root-owned parent's fd."""
    job = job_id(job)
    problems = []  # type: List[str]
    path = os.path.join(stage_root, job)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return problems
    if uid != 0 and stat.S_ISDIR(st.st_mode):
        pid = os.fork()
        if pid == 0:  # child: become the job's user, then sweep
            code = 1
            try:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                left = sweep(path)
                if left:
                    sys.stderr.write("shoal epilog: {}\n".format("; ".join(left)))
                code = 0
            except BaseException as exc:  # the child must never return into the Epilog
                sys.stderr.write(f"shoal epilog: sweep as uid {uid}: {exc}\n")
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            problems.append(f"sweep of {path} as uid {uid} failed")
    try:
        sfd = os.open(stage_root, DIR_NOFOLLOW)
    except OSError as exc:
        problems.append(f"{stage_root}: {exc.strerror}")
        return problems
    try:
        st = os.fstat(sfd)
        if st.st_uid != 0 or st.st_mode & 0o022:
            problems.append(f"{stage_root} is not root-owned; left alone")
            return problems
        if _mounts_below(path):
            problems.append(f"{path} still has mounts; left in place")
            return problems
        _rmtree_at(sfd, job)
    except OSError as exc:
        problems.append(f"{path}: {exc}")
    finally:
        os.close(sfd)
    return problems


def _mounts_below(path: str) -> List[str]:
    """Mount points at or below PATH, by the literal path (mountinfo shows resolved paths; a
    user's symlink is not resolved here, so it cannot point this at another mount)."""
    out = []
    prefix = path.rstrip("/")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                out.append(target)
    return out


# ---- the mount: directly (real root) or through the broker (confined node root) ----------------


def can_mount() -> bool:
    """Whether this process holds CAP_SYS_ADMIN (real root on a site; not confined node root)."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 21))
    except (OSError, ValueError):
        pass
    return False


def broker_call(request: Dict[str, Any], path: str = BROKER_SOCKET,
                timeout: float = 300.0, fd: Optional[int] = None) -> Dict[str, Any]:
    """One request to the mount broker (with FD passed along, if given); its answer. Raises
    Refused when it refuses. A "busy" answer (the socket serves a few requests at once,
    broker.SLOTS_PER_SOCKET) is tried again with back-off for up to a minute."""
    deadline = time.monotonic() + min(timeout, 60.0)
    pause = 0.05
    while True:
        try:
            return _broker_call_once(request, path, timeout, fd)
        except Busy:
            if time.monotonic() + pause > deadline:
                raise Refused(f"mount broker at {path}: busy for {min(timeout, 60.0):.0f} s")
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def _broker_call_once(request: Dict[str, Any], path: str, timeout: float,
                      fd: Optional[int]) -> Dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    sent = None  # type: Optional[OSError]
    try:
        s.connect(path)
        data = json.dumps(request).encode() + b"\n"
        try:
            if fd is None:
                s.sendall(data)
            else:
                s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
        except (BrokenPipeError, ConnectionResetError) as exc:
            # a full broker answers "busy" and hangs up without reading the request: the send
            # can fail, and the answer is still waiting in this socket's receive buffer
            sent = exc
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError as exc:
        raise Refused(f"mount broker at {path}: {exc.strerror or exc}")
    finally:
        s.close()
    if sent is not None and not buf:
        raise Refused(f"mount broker at {path}: {sent.strerror or sent}")
    try:
        answer = json.loads(buf.decode() or "{}")
    except ValueError:
        raise Refused("mount broker answered garbage")
    if isinstance(answer, dict) and answer.get("busy"):
        raise Busy("busy")
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise Refused("mount broker refused: {}".format(
            answer.get("error") if isinstance(answer, dict) else answer))
    return answer


def _root(root: Optional[str]) -> str:
    # read at call time: the agent's hidden --mount-root (tests) sets the module's MOUNT_ROOT
    return root or MOUNT_ROOT


def mount_dir(job: str, image: str, root: Optional[str] = None) -> str:
    """MOUNT_ROOT/JOB/IMAGE, made by root (every component root-owned, none followed)."""
    job = job_id(job)
    if not IMAGE_RE.match(image):
        raise Refused(f"bad image name {image!r}")
    dest = os.path.join(_root(root), job, image)
    root_dir(dest)
    return dest


def state_path(job: str, image: str, root: Optional[str] = None) -> str:
    return os.path.join(_root(root), job_id(job), f"{image}.state.json")


def save_root_state(job: str, image: str, state: Dict[str, Any],
                    root: Optional[str] = None) -> None:
    """The Prolog's record, readable by the job (0644) in the root-owned job directory."""
    path = state_path(job, image, root)
    root_dir(os.path.dirname(path))
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, NEW_FILE, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def load_root_state(job: str, image: str, root: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """The Prolog's record for (JOB, IMAGE), trusted only if root wrote it."""
    try:
        fd = os.open(state_path(job, image, root), FILE_NOFOLLOW)
    except (OSError, Refused):
        return None
    with os.fdopen(fd) as f:
        if os.fstat(f.fileno()).st_uid != 0:
            return None
        try:
            data = json.load(f)
        except ValueError:
            return None
    return data if isinstance(data, dict) else None


def root_job_images(job: str, root: Optional[str] = None) -> List[str]:
    d = os.path.join(_root(root), job_id(job))
    try:
        names = os.listdir(d)
    except OSError:
        return []
    return sorted(n[: -len(".state.json")] for n in names if n.endswith(".state.json"))
