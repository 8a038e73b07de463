"""The site configuration: what an HPC site sets once for every user of its login nodes.

File: ``/etc/shoal/shoal.toml`` (another file with ``SHOAL_CONFIG=PATH``; none at all with
``SHOAL_CONFIG=""``). Every key is optional; an environment variable set by the user wins over
the file, the file over shoal's defaults (shoal.paths)::

    store = "/pfs/store"          # the image store, at the path the compute nodes see it too
                                  #   (env SHOAL_STORE)
    state = "/var/lib/shoal"      # clusters' state (env SHOAL_STATE)
    cache = "/var/cache/shoal"    # build caches (env SHOAL_CACHE)
    sbatch_args = ["--account=proj", "--qos=normal"]
                                  # given to every allocation `shoal run`/`dist`/`study` make,
                                  # before the command's own --sbatch-arg / [study] sbatch_args

A virtual cluster writes one per cluster and binds it at /etc/shoal on its login node and nodes
(store = /pfs/store), so shoal run there works as on a real site.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.errors import ConfigError

DEFAULT_PATH = "/etc/shoal/shoal.toml"
ENV = "SHOAL_CONFIG"
KEYS = ("store", "state", "cache", "sbatch_args")


@dataclass(frozen=True)
class SiteConfig:
    path: str | None = None  # the file read (None: no file)
    store: str | None = None
    state: str | None = None
    cache: str | None = None
    sbatch_args: tuple[str, ...] = ()


def config_path() -> str | None:
    env = os.environ.get(ENV)
    if env is not None:
        return env or None
    return DEFAULT_PATH


def load() -> SiteConfig:
    """The site configuration (empty when there is no file); ConfigError quotes a bad value."""
    path = config_path()
    if path is None:
        return SiteConfig()
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return SiteConfig()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the site configuration {path}: {exc}",
                          f"fix its permissions, or set {ENV}= to use none") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", "fix the syntax") from None
    return parse(doc, path)


def parse(doc: dict[str, Any], path: str) -> SiteConfig:
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} = {doc[unknown[0]]!r}",
                          f"known keys: {', '.join(KEYS)}")
    vals: dict[str, Any] = {}
    for key in ("store", "state", "cache"):
        v = doc.get(key)
        if v is None:
            continue
        if not isinstance(v, str) or not v.startswith("/"):
            raise ConfigError(f"{path}: {key} = {v!r} must be an absolute path",
                              f'e.g. {key} = "/pfs/store"' if key == "store" else None)
        vals[key] = v
    args = doc.get("sbatch_args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) and a.startswith("-")
                                             and "\n" not in a for a in args):
        raise ConfigError(f"{path}: sbatch_args = {args!r} must be a list of sbatch options",
                          'e.g. sbatch_args = ["--account=proj"]')
    return SiteConfig(path=path, sbatch_args=tuple(args), **vals)


def render(store: str) -> str:
    """The site configuration a virtual cluster gives its login node and nodes."""
    return ("# written by shoal for this virtual cluster (bound at /etc/shoal on every host)\n"
            f"store = {store!r}\n").replace("'", '"')
