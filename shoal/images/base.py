"""The Debian 12 minbase root filesystem every shoal image starts from.

Built once by debootstrap and cached under ``cache_root()/base/<hash>``; the hash covers everything
that decides its content (suite, variant, mirrors, the files we add), so a change builds a new base
next to the old one instead of mutating it. The tree is built in a temporary directory and renamed
into place, so a crash never leaves a half-built base that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from shoal import paths
from shoal.errors import CommandError, ImageError
from shoal.fsutil import locked, remove_tree, require_space
from shoal.images.progress import step
from shoal.runner import run

SUITE = "bookworm"
VARIANT = "minbase"
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
FALLBACK_MIRROR = "http://deb.debian.org/debian"
FALLBACK_SECURITY = "http://deb.debian.org/debian-security"
# Bump when the post-debootstrap edits below change: part of the base hash.
BASE_RECIPE_VERSION = "3"

# Docs, man pages and locales are dead weight in an image that is shipped to every node.
DPKG_NODOC = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
"""
APT_NORECOMMENDS = 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
DEBOOTSTRAP_TIMEOUT = 1200.0
BASE_SPACE = 600 << 20  # debootstrap downloads .debs (~60 MB) and unpacks ~200 MB


@dataclass(frozen=True)
class Mirrors:
    main: str
    security: str


def read_mirrors(sources: Path = DEBIAN_SOURCES) -> Mirrors:
    """Mirrors of the host's deb822 sources file (the ones that are known to work here)."""
    main, security = FALLBACK_MIRROR, FALLBACK_SECURITY
    try:
        text = sources.read_text()
    except OSError:
        return Mirrors(main, security)
    found_main = found_sec = False
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        uris = fields.get("uris", "").split()
        suites = fields.get("suites", "").split()
        if not uris or "deb" not in fields.get("types", "deb").split():
            continue
        if any(s.endswith("-security") for s in suites):
            if not found_sec:
                security, found_sec = uris[0], True
        elif SUITE in suites and not found_main:
            main, found_main = uris[0], True
    return Mirrors(main.rstrip("/"), security.rstrip("/"))


def apt_sources(m: Mirrors) -> str:
    # The security suite matters: the host's Slurm comes from it, and node and host must match.
    return (
        "Types: deb\n"
        f"URIs: {m.main}\n"
        f"Suites: {SUITE} {SUITE}-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\n"
        f"URIs: {m.security}\n"
        f"Suites: {SUITE}-security\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


def base_hash(m: Mirrors) -> str:
    recipe = {
        "suite": SUITE,
        "variant": VARIANT,
        "main": m.main,
        "security": m.security,
        "recipe": BASE_RECIPE_VERSION,
        "nodoc": DPKG_NODOC,
        "apt": APT_NORECOMMENDS,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def base_root() -> Path:
    return paths.cache_root() / "base"


def base_path() -> Path:
    """Where the base for the current mirrors is (or will be) cached."""
    return base_root() / base_hash(read_mirrors())


def empty_dev(root: Path) -> None:
    """Remove everything under root/dev.

    ch-image import copies device nodes by reading them: /dev/zero or /dev/urandom would fill the
    disk. ch-run mounts the host's /dev anyway, so an empty directory is all an image needs.
    """
    dev = root / "dev"
    if dev.is_symlink() or dev.is_file():
        dev.unlink()
    dev.mkdir(exist_ok=True)
    for entry in dev.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def finish_tree(root: Path, m: Mirrors) -> None:
    """Post-debootstrap edits: empty /dev, files ch-run binds over, apt and dpkg settings."""
    empty_dev(root)
    etc = root / "etc"
    hosts = etc / "hosts"
    if not hosts.exists():
        hosts.write_text(HOSTS)
    resolv = etc / "resolv.conf"
    if resolv.is_symlink() or not resolv.exists():
        resolv.unlink(missing_ok=True)
        # ch-run binds the host's resolv.conf over this; it only has to exist.
        resolv.write_text("# replaced at run time\n")
    (etc / "apt" / "sources.list").unlink(missing_ok=True)
    srcdir = etc / "apt" / "sources.list.d"
    srcdir.mkdir(parents=True, exist_ok=True)
    (srcdir / "debian.sources").write_text(apt_sources(m))
    (etc / "apt" / "apt.conf.d" / "90shoal-norecommends").write_text(APT_NORECOMMENDS)
    dpkg_d = etc / "dpkg" / "dpkg.cfg.d"
    dpkg_d.mkdir(parents=True, exist_ok=True)
    (dpkg_d / "01shoal-nodoc").write_text(DPKG_NODOC)
    # Drop what debootstrap left in the apt caches: it is re-fetched by `apt-get update` anyway.
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        d = root / sub
        if d.is_dir():
            for entry in d.iterdir():
                if entry.is_file() and entry.name != "lock":
                    entry.unlink()


def ensure_base() -> Path:
    """Return the cached Debian 12 minbase tree, building it first if needed (~45 s)."""
    m = read_mirrors()
    root = base_root()
    final = root / base_hash(m)
    if (final / "etc" / "debian_version").exists():
        return final
    with locked(root / ".lock"):
        if (final / "etc" / "debian_version").exists():
            return final
        tmp = root / f".tmp-{final.name}-{os.getpid()}"
        _remove_stale(root)
        require_space(root, BASE_SPACE)
        tmp.mkdir(parents=True)
        try:
            with step(f"debootstrap {VARIANT} {SUITE} (about 45 s)"):
                try:
                    run(
                        ["debootstrap", f"--variant={VARIANT}", SUITE, str(tmp), m.main],
                        timeout=DEBOOTSTRAP_TIMEOUT,
                        what="debootstrap",
                        hint=f"check that {m.main} is reachable and that there is space under {root}",
                    )
                except CommandError as exc:
                    raise ImageError(f"building the Debian base failed: {exc.message}", exc.hint) from exc
            finish_tree(tmp, m)
            (tmp / ".shoal-base.json").write_text(
                json.dumps({"hash": final.name, "mirror": m.main, "created": time.time()}) + "\n"
            )
            tmp.rename(final)
        except BaseException:
            remove_tree(tmp)
            raise
    return final


def _remove_stale(root: Path) -> None:
    """Temp trees of crashed earlier runs (we hold the lock, so none is in use)."""
    for entry in root.glob(".tmp-*"):
        remove_tree(entry)
