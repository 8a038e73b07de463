"""Cluster settings: TOML, validated on load; the defaults and the named network profiles live here.

An error quotes the bad key, its value and where it came from (file and line).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shoal.errors import ConfigError

NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")

# Per idle node: supervisord + slurmd + sshd + rsyslogd + munged, measured (docs/PERFORMANCE.md),
# plus headroom for the overlay's page cache; used to refuse clusters the machine cannot hold.
NODE_MEMORY_BUDGET_MB = 96


@dataclass(frozen=True)
class NetworkProfile:
    """Per-link shaping applied with tbf on both ends of every veth (no netem on this kernel)."""

    name: str
    description: str
    rate_mbit: float | None  # None: unshaped
    burst_kbyte: int = 256
    latency_ms: int = 50

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "rate_mbit": self.rate_mbit,
            "burst_kbyte": self.burst_kbyte,
            "latency_ms": self.latency_ms,
        }


# Real fabrics scaled down by 10 so that one 2-core machine can saturate them with many nodes:
# the ratios between methods, not the absolute seconds, are what the study compares.
NETWORK_PROFILES: dict[str, NetworkProfile] = {
    p.name: p
    for p in (
        NetworkProfile("none", "unshaped veth links (memory speed)", None),
        NetworkProfile("eth10g", "10 GbE scaled 1/10: 1 Gbit/s per link", 1000.0, 256),
        NetworkProfile("opa100g", "100 Gb/s Omni-Path scaled 1/10: 10 Gbit/s per link", 10000.0, 1024),
        NetworkProfile("eth1g", "1 GbE scaled 1/10: 100 Mbit/s per link", 100.0, 64),
    )
}


# Where /pfs (with the image store at /pfs/store) comes from on the controller and the nodes.
STORAGE_MODES: dict[str, str] = {
    "bind": "host directory bind-mounted into every host (shared, no network cost)",
    "sshfs": "sshfs from a storage host on the cluster network (reads cross the shaped links)",
}


@dataclass(frozen=True)
class ClusterConfig:
    name: str = "shoal"
    nodes: int = 4
    network: str = "none"
    cpus_per_node: int = 2
    memory_mb_per_node: int = 2048
    tmpfs_size: str = "2G"
    accounting: bool = True
    storage: str = "bind"
    source: str = "defaults"
    extra_slurm_conf: tuple[str, ...] = field(default_factory=tuple)
    # The node state service (shoal/state) starts with the cluster and tells Slurm at once when
    # a node or its slurmd dies. health_source "state": slurmctld's own slurmd timeout is off
    # (SlurmdTimeout=0) and the state service is Slurm's only source of node health.
    state_service: bool = True
    health_source: str = "slurm"

    @property
    def profile(self) -> NetworkProfile:
        return NETWORK_PROFILES[self.network]

    def node_names(self) -> list[str]:
        return [f"node{i}" for i in range(1, self.nodes + 1)]


_KEYS: dict[str, type] = {
    "name": str,
    "nodes": int,
    "network": str,
    "cpus_per_node": int,
    "memory_mb_per_node": int,
    "tmpfs_size": str,
    "accounting": bool,
    "storage": str,
    "extra_slurm_conf": list,
    "state_service": bool,
    "health_source": str,
}

HEALTH_SOURCES = ("slurm", "state")

_SIZE_RE = re.compile(r"^[1-9][0-9]*[KMG]?$")


def _where(source: str, text: str | None, key: str) -> str:
    if text is None:
        return source
    for no, line in enumerate(text.splitlines(), 1):
        if re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return f"{source}:{no}"
    return source


def validate(raw: dict[str, Any], source: str = "defaults", text: str | None = None) -> ClusterConfig:
    """Turn a raw mapping (TOML table or CLI options) into a checked ClusterConfig."""
    table = raw.get("cluster", raw) if isinstance(raw.get("cluster"), dict) else raw
    cfg = ClusterConfig(source=source)
    values: dict[str, Any] = {}
    for key, value in table.items():
        at = _where(source, text, key)
        if key not in _KEYS:
            raise ConfigError(
                f"{at}: unknown key {key!r} = {value!r}",
                f"known keys: {', '.join(sorted(_KEYS))}",
            )
        want = _KEYS[key]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if not ok:
            raise ConfigError(
                f"{at}: {key} = {value!r} must be of type {want.__name__}",
                "fix the value in the cluster config",
            )
        values[key] = tuple(value) if key == "extra_slurm_conf" else value
    cfg = replace(cfg, **values)

    def where(k: str) -> str:
        return _where(source, text, k)

    if not NAME_RE.match(cfg.name):
        raise ConfigError(
            f"{where('name')}: name = {cfg.name!r} is not a valid cluster name",
            "use 1-10 lowercase letters/digits starting with a letter (it names bridges and netns)",
        )
    if not 1 <= cfg.nodes <= 200:
        raise ConfigError(
            f"{where('nodes')}: nodes = {cfg.nodes} is out of range",
            "a virtual cluster has 1 to 200 nodes",
        )
    if cfg.network not in NETWORK_PROFILES:
        raise ConfigError(
            f"{where('network')}: network = {cfg.network!r} is not a known profile",
            f"known profiles: {', '.join(NETWORK_PROFILES)}",
        )
    if cfg.storage not in STORAGE_MODES:
        raise ConfigError(
            f"{where('storage')}: storage = {cfg.storage!r} is not a storage mode",
            f"use one of: {', '.join(STORAGE_MODES)}",
        )
    if cfg.health_source not in HEALTH_SOURCES:
        raise ConfigError(
            f"{where('health_source')}: health_source = {cfg.health_source!r} is not known",
            "use 'slurm' (slurmd timeouts) or 'state' (the state service alone)",
        )
    if cfg.health_source == "state" and not cfg.state_service:
        raise ConfigError(
            f"{where('health_source')}: health_source = 'state' needs state_service = true",
            "without the state service nothing would mark dead nodes DOWN",
        )
    if not 1 <= cfg.cpus_per_node <= 256:
        raise ConfigError(
            f"{where('cpus_per_node')}: cpus_per_node = {cfg.cpus_per_node} is out of range", "use 1-256"
        )
    if cfg.memory_mb_per_node < 64:
        raise ConfigError(
            f"{where('memory_mb_per_node')}: memory_mb_per_node = {cfg.memory_mb_per_node} is too small",
            "Slurm needs at least 64 MB per node",
        )
    if not _SIZE_RE.match(cfg.tmpfs_size):
        raise ConfigError(
            f"{where('tmpfs_size')}: tmpfs_size = {cfg.tmpfs_size!r} is not a size",
            "write it like 512M or 2G",
        )
    return cfg


def load(path: Path | None, overrides: dict[str, Any]) -> ClusterConfig:
    """Config file (optional) first, then command-line overrides; both validated."""
    raw: dict[str, Any] = {}
    text: str | None = None
    source = "command line"
    if path is not None:
        try:
            text = path.read_text()
            raw = tomllib.loads(text)
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}", "check the path") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}", "fix the syntax") from exc
        source = str(path)
        raw = dict(raw.get("cluster", raw))
    cfg = validate(raw, source, text)
    if overrides:
        merged = {k: getattr(cfg, k) for k in _KEYS}
        merged["extra_slurm_conf"] = list(cfg.extra_slurm_conf)
        merged.update({k: v for k, v in overrides.items() if v is not None})
        cfg = validate(merged, source if not overrides else f"{source} + command line", text)
    return cfg
