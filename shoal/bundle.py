"""Pack the node side of shoal.staging into one zipapp file that plain ``python3`` runs.

Nodes have no venv and no shoal installation; the bundle carries exactly the stdlib-only modules
the node agent imports (MODULES) with empty package ``__init__`` files, so nothing else of shoal
(click, rich, the driver) is imported on a node. ``python3 BUNDLE SUBCOMMAND ...`` runs
``shoal.staging.nodeagent.main``; the file name does not matter (Python recognises the zip), so the
same bundle can be installed as /etc/slurm/shoal-nodeagent.py for the Prolog and Epilog.

Each module is shipped with its bytecode beside it (``name.pyc``, PEP 552 unchecked-hash form,
compiled by this Python): zipimport cannot cache bytecode, so without it every agent start
compiled ~5000 lines, half the CPU of a start (0.10 -> 0.06 s measured), paid once per node and
step (bcast's collective step starts one agent per node at once, on shared cores here). A node
whose python3 has another bytecode version (3.6 on RHEL 8) finds the magic number wrong and
zipimport falls back to the source next to it.

A foundation module (it imports no other part of shoal, only reads their files): the cluster
installs the bundle for the Prolog at `up`, and the staging driver and the study publish it in the
store, without the cluster package importing the staging package above it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import marshal
import os
import re
import stat
import time
import zipfile
from pathlib import Path

from shoal.errors import ShoalError
from shoal.paths import PACKAGE_PARENT

MODULES = (
    "shoal/errors.py",
    "shoal/names.py",
    "shoal/runner.py",
    "shoal/staging/base.py",
    "shoal/staging/accounting.py",
    "shoal/staging/nodeagent.py",
    "shoal/staging/privileged.py",
    "shoal/staging/jobstep.py",
    "shoal/staging/record.py",
    "shoal/staging/registry.py",
    "shoal/staging/methods/__init__.py",
    "shoal/staging/methods/untar.py",
    "shoal/staging/methods/sbcast.py",
    "shoal/staging/methods/squashfs_kernel.py",
    "shoal/staging/methods/sbcast_squashfs.py",
    "shoal/staging/methods/squashfuse.py",
    "shoal/staging/methods/shared_dir.py",
    "shoal/staging/bcast.py",
    "shoal/staging/methods/bcast.py",
    "shoal/staging/oci.py",
    "shoal/staging/methods/registry.py",
    "shoal/images/treedigest.py",
    "shoal/slurm/hostlist.py",
    # the workload registry, and its scripts: read as data by the `workload` step and copied
    # into the container's view of /tmp
    "shoal/workloads/__init__.py",
    "shoal/workloads/catwalk.py",
    "shoal/workloads/startread.py",
    "shoal/workloads/statwalk.py",
)
# packages whose __init__ is empty in the bundle (the others have theirs in MODULES)
PACKAGES = ("shoal", "shoal/staging", "shoal/images", "shoal/slurm")
MAIN = (
    "import sys\n"
    "from shoal.staging.nodeagent import main\n"
    "sys.exit(main())\n"
)
# fixed timestamp: the same sources give the same bytes, so the hash names the content
_EPOCH = (2020, 1, 1, 0, 0, 0)


def _sources() -> list[tuple[str, bytes]]:
    """(path in the bundle, source) of every file, in bundle order."""
    files = [("__main__.py", MAIN.encode())]
    files += [(f"{pkg}/__init__.py", b"") for pkg in PACKAGES]
    for rel in MODULES:
        src = PACKAGE_PARENT / rel
        # a module missing here would surface on the nodes as an ImportError in the middle of
        # a job: refuse to build a bundle that cannot run
        if not src.is_file():
            raise ShoalError(
                f"node bundle: module {rel} is missing",
                hint="a module was renamed or removed: update MODULES in shoal/bundle.py",
            )
        files.append((rel, src.read_bytes()))
    return files


def _pyc(name: str, source: bytes) -> bytes:
    """Bytecode of SOURCE as zipimport reads it beside NAME: magic, flags = 1 (hash-based,
    unchecked: the bundle never changes under its name), the source's hash, the code."""
    code = compile(source, name, "exec", dont_inherit=True)
    return (importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def bundle_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:

        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)

        for name, source in _sources():
            add(name, source)
            if name != "__main__.py":  # runpy compiles the two-line __main__ itself
                add(f"{name}c", _pyc(name, source))
    return buf.getvalue()


def bundle_hash() -> str:
    """The bundle's name: its sources and the bytecode version. Not the bytes: marshal output
    may differ between runs of the same Python (reference flags), the code it loads does not."""
    h = hashlib.sha256(importlib.util.MAGIC_NUMBER)
    for name, source in _sources():
        h.update(f"{name}\0{len(source)}\0".encode())
        h.update(source)
    return h.hexdigest()[:16]


def write_bundle(dest: str | os.PathLike[str]) -> Path:
    """Write the bundle to dest atomically (a node may be reading the previous one)."""
    data = bundle_bytes()
    path = Path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


# A published bundle nobody published again for this long is removed by the next publish of
# another one: every `shoal run`, study or `cluster up` publishes (touches) the bundle its shoal
# uses, so only bundles of shoal versions not run for a month go; a job script naming one of those
# still queued after a month would fail its Prolog with "no such file", loudly.
PRUNE_AFTER_S = 30 * 86400
_BUNDLE_NAME = re.compile(r"agent-[0-9a-f]{16}\.pyz")


def publish(store: str | os.PathLike[str]) -> str:
    """Put the bundle under the store's .shoal/ named by its hash; return its file name.

    The store's owner (root) also marks it as in use (mtime) and removes bundles unused for
    PRUNE_AFTER_S; another user only reads what is there.
    """
    name = f"agent-{bundle_hash()}.pyz"
    dest = Path(store) / ".shoal" / name
    if dest.exists():
        if os.access(dest.parent, os.W_OK):
            with contextlib.suppress(OSError):  # a bundle another process just pruned: next run
                os.utime(dest)
                prune(dest.parent, keep=name)
    else:
        # root runs this file on every node (Prolog, job steps of root): only the store's owner
        # (root) may put it there; a user gets the one the admin published
        if not os.access(dest.parent if dest.parent.exists() else store, os.W_OK):
            raise ShoalError(
                f"the node agent {name} of this shoal is not in the store {store}, and only "
                "root may publish it",
                hint="ask the admin to run `shoal cluster up` (or any `shoal run` as root) with "
                     "this version of shoal, which publishes it")
        write_bundle(dest)
        prune(dest.parent, keep=name)
    return name


def prune(folder: Path, keep: str, now: float | None = None) -> list[str]:
    """Remove agent bundles in FOLDER (the store's .shoal/) not published for PRUNE_AFTER_S,
    never KEEP; the names removed. Only regular files named like a bundle (lstat: a link
    planted there is not followed, and is not ours to remove)."""
    cutoff = (time.time() if now is None else now) - PRUNE_AFTER_S
    gone: list[str] = []
    for entry in os.scandir(folder):
        if entry.name == keep or not _BUNDLE_NAME.fullmatch(entry.name):
            continue
        with contextlib.suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                os.unlink(entry.path)
                gone.append(entry.name)
    return gone
