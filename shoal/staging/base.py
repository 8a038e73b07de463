"""The interface every distribution method implements, its registry, and node-side helpers.

STANDARD LIBRARY ONLY (plus shoal.errors and shoal.runner, themselves stdlib-only): this module runs
on the nodes inside the node agent bundle (see shoal.bundle).

A method is one module in shoal/staging/methods/ holding one ``Method`` subclass decorated with
``@register("name")``. Its node side is ``check`` (fail up front: privilege, space, files),
``stage`` (make the image usable at ``Staged.path``) and ``cleanup`` (idempotent). What the login
side must do between ``check`` and ``stage`` is declared, not coded: ``collective = "sbcast"`` asks
the driver to broadcast the method's artifact to ``ctx.local_artifact`` on every node.

Node-local layout per job: /tmp/shoal/<jobid>/<image>/ is the staged directory or mount point,
/tmp/shoal/<jobid>/<image>.<ext> a broadcast artifact, /tmp/shoal/<jobid>/<image>.state.json the
agent's state (method, baseline counters) that cleanup and verify read.
"""

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, NamedTuple, TypeVar

from shoal.errors import DistError, PrivilegeError
from shoal.runner import run

FORMAT = 1
STAGE_ROOT = "/tmp/shoal"
DEFAULT_STORE = "/pfs/store"
AGENT_DIR = ".shoal"  # under the store: the agent bundle root publishes
# artifact kind -> the store manifest's export format, default file name, node-local suffix
EXPORTS = {"tar": "tar.gz", "sqfs": "squashfs", "dir": "dir"}
DEFAULT_NAMES = {"tar": "{image}.tar.gz", "sqfs": "{image}.sqfs", "dir": "dir"}
LOCAL_SUFFIX = {"tar": "tar.gz", "sqfs": "sqfs"}
# slack over the manifest's byte count: directories, block rounding, tar's own files
SPACE_SLACK = 1.05
SPACE_SLACK_BYTES = 4 << 20


class Context:
    """Everything a method needs to know on a node about one staging.

    A plain class, not a dataclass: the node side runs on Python 3.6."""

    def __init__(self, job: "str", image: "str", store: "str" = DEFAULT_STORE,
                 options: "dict[str, Any] | None" = None, stage_root: "str" = STAGE_ROOT,
                 staged_extra: "dict[str, Any] | None" = None) -> "None":
        self.job = job
        self.image = image
        self.store = store
        self.options: "dict[str, Any]" = {} if options is None else options
        self.stage_root = stage_root
        # what stage recorded (Staged.extra), given back to cleanup
        self.staged_extra: "dict[str, Any]" = {} if staged_extra is None else staged_extra
        # sub-phases a method times inside its stage step: shoal.staging.accounting.phase(ctx, name)
        self.phases: "dict[str, Any]" = {}
        self._manifest: "dict[str, Any] | None" = None

    def __repr__(self) -> "str":
        return (f"Context(job={self.job!r}, image={self.image!r}, store={self.store!r}, "
                f"stage_root={self.stage_root!r})")

    @property
    def image_store(self) -> "str":
        return os.path.join(self.store, self.image)

    @property
    def job_dir(self) -> "str":
        return os.path.join(self.stage_root, self.job)

    @property
    def staged_dir(self) -> "str":
        return os.path.join(self.job_dir, self.image)

    @property
    def state_file(self) -> "str":
        return os.path.join(self.job_dir, f"{self.image}.state.json")

    def artifact_name(self, kind: "str") -> "str":
        """File name of artifact KIND (tar, sqfs, dir) in the image's store entry."""
        exports = self.manifest().get("exports")
        if isinstance(exports, dict) and isinstance(exports.get(EXPORTS[kind]), str):
            return str(exports[EXPORTS[kind]])
        return DEFAULT_NAMES[kind].format(image=self.image)

    def artifact(self, kind: "str") -> "str":
        """Path of the image's artifact KIND on shared storage."""
        return os.path.join(self.image_store, self.artifact_name(kind))

    def artifact_bytes(self, kind: "str") -> "int":
        """Size of artifact KIND from the manifest (0 when it does not say)."""
        sizes = self.manifest().get("sizes")
        size = sizes.get(self.artifact_name(kind)) if isinstance(sizes, dict) else None
        return size if isinstance(size, int) else 0

    def local_artifact(self, kind: "str") -> "str":
        """Where a collective puts artifact KIND on the node's local storage."""
        return os.path.join(self.job_dir, f"{self.image}.{LOCAL_SUFFIX[kind]}")

    def manifest(self) -> "dict[str, Any]":
        if self._manifest is None:
            path = os.path.join(self.image_store, "manifest.json")
            try:
                with open(path) as f:
                    data = json.load(f)
            except FileNotFoundError:
                raise DistError(
                    f"image {self.image!r} is not in the store ({path} missing)",
                    "export it first: shoal image export NAME",
                ) from None
            except (OSError, ValueError) as exc:
                raise DistError(f"cannot read {path}: {exc}", "re-export the image") from None
            if not isinstance(data, dict):
                raise DistError(f"{path} is not a JSON object", "re-export the image")
            self._manifest = data
        return self._manifest


class Staged:
    """Where the image is usable on this node, and what staging it cost beyond the counters."""

    def __init__(self, path: "str", storage_bytes_read: "int" = 0,
                 extra: "dict[str, Any] | None" = None) -> "None":
        self.path = path
        self.storage_bytes_read = storage_bytes_read
        self.extra: "dict[str, Any]" = {} if extra is None else extra

    def __repr__(self) -> "str":
        return f"Staged({self.path!r}, {self.storage_bytes_read}, {self.extra!r})"


class Method:
    """One way to make an image usable on a node (subclass, then ``@register``)."""

    name: "ClassVar[str]" = ""
    artifact: "ClassVar[str]" = "tar"  # which store artifact it uses: tar, sqfs or dir
    collective: "ClassVar[str | None]" = None  # driver-side step between check and stage
    # driver-side step before anything is timed ("registry-push": fill the cluster's registry)
    prepare: "ClassVar[str | None]" = None
    privileged: "ClassVar[bool]" = False  # needs root on the node (mounts)
    # staged by shoal's Prolog when the job asks in its comment (shoal.staging.privileged):
    # a mount of a file of the admin's store, done by root before the job starts
    prolog: "ClassVar[bool]" = False
    description: "ClassVar[str]" = ""
    # what its stage step is in the job's phase breakdown: "stage" (a copy/unpack into the node)
    # or "mount" (lazy: the image stays where it is, reads happen in the workload)
    phase: "ClassVar[str]" = "stage"

    def check(self, ctx: "Context") -> "None":
        """Fail before anything is changed on the node (missing file, privilege, space)."""
        require_exists(ctx.artifact(self.artifact), ctx)

    def stage(self, ctx: "Context") -> "Staged":
        raise NotImplementedError

    def cleanup(self, ctx: "Context") -> "dict[str, Any]":
        """Undo stage (idempotent); may return figures only known at the end (mount reads)."""
        return {}

    def local_bytes_needed(self, ctx: "Context") -> "int":
        """Node-local bytes this method needs for the image (0: nothing is copied locally)."""
        return 0

    def root_mount(self, src: "str", dest: "str") -> "Staged":
        """Prolog methods: mount SRC (a checked store file) on DEST (a directory root made)."""
        raise NotImplementedError

    def root_unmount(self, dest: "str", extra: "dict[str, Any]") -> "dict[str, Any]":
        """Prolog methods: undo root_mount (the Epilog); EXTRA is what root_mount recorded."""
        raise NotImplementedError


M = TypeVar("M", bound="type[Method]")
REGISTRY: "dict[str, type[Method]]" = {}


def register(name: "str") -> "Callable[[M], M]":
    """Class decorator: make a Method findable by name."""

    def deco(cls: "M") -> "M":
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"distribution method {name!r} registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


# ---- node-side helpers -------------------------------------------------------------------------


def require_exists(path: "str", ctx: "Context") -> "None":
    if not os.path.exists(path):
        raise DistError(
            f"{path} missing: image {ctx.image!r} has no such export in the store",
            "export it first: shoal image export NAME --format tar.gz|squashfs|dir",
        )


def require_root(method: "str") -> "None":
    if os.geteuid() != 0:
        raise PrivilegeError(
            f"method {method} needs root on the node to loop-mount, and this step runs as uid "
            f"{os.geteuid()} with no Slurm Prolog having staged the image",
            "use `shoal run` (it asks the Prolog to mount) on a site with shoal's Prolog, run as "
            "root, or choose the unprivileged squashfuse method",
        )


def free_bytes(path: "str") -> "int":
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def used_bytes(path: "str") -> "int":
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def check_space(ctx: "Context", need: "int") -> "None":
    """Refuse to unpack when the node-local file system cannot hold the image."""
    if need <= 0:
        return
    where = ctx.stage_root if os.path.isdir(ctx.stage_root) else os.path.dirname(ctx.stage_root)
    free = free_bytes(where)
    want = int(need * SPACE_SLACK) + SPACE_SLACK_BYTES
    if free < want:
        raise DistError(
            f"node-local storage too small for image {ctx.image!r}: {where} has "
            f"{free / 2**20:.0f} MiB free, the image needs {want / 2**20:.0f} MiB",
            "use a squashfs or shared-dir method, or nodes with a larger /tmp",
        )


def image_bytes(ctx: "Context") -> "int":
    """Unpacked size of the image from its manifest (0 when the manifest does not say)."""
    m = ctx.manifest()
    for key in ("bytes", "tree_bytes", "size"):
        v = m.get(key)
        if isinstance(v, int):
            return v
    return 0


def net_rx_bytes() -> "int":
    """Bytes received on every interface but lo, in this process's network namespace.

    /proc/net/dev rather than /sys/class/net: sysfs shows the interfaces of the namespace that
    mounted it, and node containers bind the host's /sys.
    """
    total = 0
    try:
        with open("/proc/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return 0
    for line in lines:
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            continue
        fields = rest.split()
        if fields:
            total += int(fields[0])
    return total


def net_tx_bytes() -> "int":
    """Bytes sent on every interface but lo, in this process's network namespace."""
    total = 0
    try:
        with open("/proc/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return 0
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if name.strip() != "lo" and len(fields) > 8:
            total += int(fields[8])
    return total


def cpu_seconds() -> "float":
    """CPU seconds (user + system) of this process and its waited-for children."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def proc_io() -> "dict[str, int]":
    """This process's I/O counters (waited-for children included)."""
    out: "dict[str, int]" = {}
    with contextlib.suppress(OSError), open("/proc/self/io") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k.strip()] = int(v)
    return out


def _unescape(s: "str") -> "str":
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace(
        "\\134", "\\")


class MountInfo(NamedTuple):
    target: "str"
    fstype: "str"
    source: "str"


def mounts() -> "list[MountInfo]":
    out: "list[MountInfo]" = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            target = _unescape(left.split()[4])
            rf = right.split()
            out.append(MountInfo(target, rf[0], _unescape(rf[1]) if len(rf) > 1 else ""))
    return out


def mount_at(path: "str") -> "MountInfo | None":
    path = os.path.realpath(path)
    found = None
    for m in mounts():
        if m.target == path:
            found = m  # the last one is the top of a stack of mounts
    return found


def mounts_under(prefix: "str") -> "list[MountInfo]":
    prefix = os.path.realpath(prefix)
    return [m for m in mounts() if m.target == prefix or m.target.startswith(prefix + "/")]


def loop_read_bytes(dev: "str") -> "int | None":
    """Bytes read through loop device DEV (e.g. /dev/loop3) since it was set up."""
    name = os.path.basename(dev)
    try:
        with open(f"/sys/block/{name}/stat") as f:
            return int(f.read().split()[2]) * 512
    except (OSError, ValueError, IndexError):
        return None


def loop_backing(dev: "str") -> "str | None":
    name = os.path.basename(dev)
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            return f.read().strip()
    except OSError:
        return None


def unmount(path: "str", *, fuse: "bool" = False, timeout: "float" = 60) -> "None":
    """Unmount path; FUSE through fusermount3 (works unprivileged), lazily as a last resort."""
    if mount_at(path) is None:
        return
    if fuse:
        done = run(["fusermount3", "-u", path], check=False, timeout=timeout)
        if done.returncode == 0 or mount_at(path) is None:
            return
    done = run(["umount", path], check=False, timeout=timeout)
    if done.returncode != 0 and mount_at(path) is not None:
        run(["umount", "-l", path], timeout=timeout, what=f"unmounting {path}")


def remove_tree(path: "str") -> "None":
    """Remove a staged tree; refuse to descend into anything still mounted."""
    if not os.path.lexists(path):
        return
    if mounts_under(path):
        raise DistError(f"{path} still has mounts under it; not removing it", "unmount first")
    if os.path.isdir(path) and not os.path.islink(path):
        # image trees may hold read-only directories (as tar restored them)
        def onerror(func: "Callable[..., Any]", p: "str", _exc: "Any") -> "None":
            with contextlib.suppress(OSError):
                os.chmod(os.path.dirname(p), 0o700)
                os.chmod(p, 0o700)
            with contextlib.suppress(FileNotFoundError):
                func(p)

        shutil.rmtree(path, onerror=onerror)
    else:
        os.unlink(path)


class Sampler:
    """Peak of used bytes on a file system, sampled in a thread while a stage runs."""

    def __init__(self, path: "str", interval: "float" = 0.05) -> "None":
        self.path = path
        self.interval = interval
        self.peak = used_bytes(path)
        # an Event, not sleep(): stopping must not wait out an interval, or every lazy staging
        # time would have a floor of one interval
        self._stop = threading.Event()

    @contextlib.contextmanager
    def running(self) -> "Iterator[Sampler]":
        def loop() -> "None":
            while not self._stop.is_set():
                self.peak = max(self.peak, used_bytes(self.path))
                self._stop.wait(self.interval)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            yield self
        finally:
            self._stop.set()
            t.join()
            self.peak = max(self.peak, used_bytes(self.path))


# ---- the agent's per-image state file (method, baseline counters, the staged record) ----------


def load_state(ctx: "Context") -> "dict[str, Any] | None":
    """The staging state of (job, image): the Prolog's (root-owned, in privileged.MOUNT_ROOT)
    when it staged the image, else what this job's own steps saved in the job directory."""
    from shoal.staging import privileged as priv

    with contextlib.suppress(priv.Refused):
        root_state = priv.load_root_state(ctx.job, ctx.image)
        if root_state is not None:
            return root_state
    try:
        with open(ctx.state_file) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_state(ctx: "Context", state: "dict[str, Any]") -> "None":
    tmp = f"{ctx.state_file}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, ctx.state_file)
