"""Cluster settings: TOML, validated on load; the defaults and the named network profiles live here.

An error quotes the bad key, its value and where it came from (file and line).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shoal import limits, names
from shoal.cluster import topology
from shoal.errors import ConfigError

NAME_RE = names.CLUSTER_NAME_RE

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
    # The shared file system's aggregate bandwidth (the storage host's link, HTB), at the same
    # 1/10 scale; None: unshaped. Separate from the per-node link: a 10 GbE cluster typically
    # reads its file system at a few GB/s in total, not 10 Gbit/s per client.
    storage_mbit: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "rate_mbit": self.rate_mbit,
            "burst_kbyte": self.burst_kbyte,
            "latency_ms": self.latency_ms,
            "storage_mbit": self.storage_mbit,
        }


# Real fabrics scaled down by 10 so that one 2-core machine can saturate them with many nodes:
# the ratios between methods, not the absolute seconds, are what the study compares.
NETWORK_PROFILES: dict[str, NetworkProfile] = {
    p.name: p
    for p in (
        NetworkProfile("none", "unshaped veth links (memory speed), unshaped storage", None),
        NetworkProfile("eth10g", "10 GbE per node, 1 GB/s aggregate file system, scaled 1/10: "
                       "1 Gbit/s per link, storage 800 Mbit/s", 1000.0, 256, storage_mbit=800.0),
        NetworkProfile("opa100g", "100 Gb/s Omni-Path per node, 5 GB/s aggregate file system, "
                       "scaled 1/10: 10 Gbit/s per link, storage 4 Gbit/s", 10000.0, 1024,
                       storage_mbit=4000.0),
        NetworkProfile("eth1g", "1 GbE per node, 500 MB/s aggregate file system, scaled 1/10: "
                       "100 Mbit/s per link, storage 400 Mbit/s", 100.0, 64, storage_mbit=400.0),
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
    # storage host bandwidth in Mbit/s (storage = "sshfs"); None: the profile's storage_mbit
    storage_mbit: float | None = None
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

    @property
    def storage_rate_mbit(self) -> float | None:
        """The storage host's bandwidth: the config's, else the profile's (None: unshaped)."""
        if self.storage_mbit is not None:
            return self.storage_mbit or None  # 0 asks for unshaped storage explicitly
        return self.profile.storage_mbit

    def node_names(self) -> list[str]:
        return topology.node_names(self.nodes)


_KEYS: dict[str, type] = {
    "name": str,
    "nodes": int,
    "network": str,
    "cpus_per_node": int,
    "memory_mb_per_node": int,
    "tmpfs_size": str,
    "accounting": bool,
    "storage": str,
    "storage_mbit": float,
    "extra_slurm_conf": list,
    "state_service": bool,
    "health_source": str,
}

HEALTH_SOURCES = ("slurm", "state")

# A size as tmpfs(5) takes it: bytes, or K/M/G (powers of 1024).
_SIZE_RE = re.compile(r"([1-9][0-9]{0,15})([KMG]?)")
_SIZE_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

# -- upper bounds: per node and in total, from what this machine has --------------------------
# The address plan and the scale goal (256 nodes, stretch 512 on this 2-core/24 GiB machine);
# whether N nodes really fit in memory is the capacity check at `up` (measured cost per node).
MAX_NODES = limits.MAX_NODES
# Virtual CPUs are a label (SlurmdParameters=config_overrides): a node of the emulated cluster may
# claim as many cores as a large real HPC node has, but every task still runs on this machine.
MAX_CPUS_PER_NODE = 128
# A task costs this machine at least ~2 MB (process, stack, page tables): a job that fills every
# virtual CPU of the cluster with one task must fit in this machine's memory.
MIN_MB_PER_TASK = 2
MAX_EXTRA_SLURM_LINES = 64
MAX_EXTRA_SLURM_CHARS = 1024
# slurm.conf keys that decide who runs what as root, or how daemons authenticate: shoal sets them
# (Prolog/Epilog are its privileged mount path), an extra line must not replace them.
RESERVED_SLURM_KEYS = frozenset(k.lower() for k in (
    "Prolog", "Epilog", "PrologFlags", "PrologSlurmctld", "EpilogSlurmctld", "TaskProlog",
    "TaskEpilog", "SrunProlog", "SrunEpilog", "SlurmUser", "SlurmdUser", "AuthType", "AuthAltTypes",
    "CredType", "Include", "SlurmctldHost", "ControlMachine", "ClusterName", "NodeName",
    "PartitionName", "SlurmdSpoolDir", "StateSaveLocation", "PluginDir", "SlurmctldPort",
    "SlurmdPort", "AccountingStorageType", "ProctrackType", "TaskPlugin",
))


def machine_memory_mb() -> int:
    """MemTotal of this machine in MB (what a node's memory and /tmp are bounded by)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 20  # unknown: do not refuse on a guess


def size_bytes(size: str) -> int | None:
    """Bytes of a tmpfs size like 512M or 2G; None if SIZE is not one."""
    m = _SIZE_RE.fullmatch(size)
    if m is None:
        return None
    return int(m.group(1)) * _SIZE_MULT[m.group(2)]


def _where(source: str, text: str | None, key: str) -> str:
    if text is None:
        return source
    for no, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line):
            return f"{source}:{no}"
    return source


def _table_of(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """The settings of a parsed config file: a [cluster] table, or the keys at top level."""
    if "cluster" not in raw:
        return raw
    table = raw["cluster"]
    if not isinstance(table, dict):
        kind = "an array of tables ([[cluster]])" if isinstance(table, list) else type(table).__name__
        raise ConfigError(
            f"{source}: cluster is {kind}, not a table",
            "write the settings under one [cluster] header (or as plain keys without a header)",
        )
    others = sorted(k for k in raw if k != "cluster")
    if others:
        raise ConfigError(
            f"{source}: {', '.join(others)} outside the [cluster] table would be ignored",
            "move every setting under [cluster] (or drop the [cluster] header)",
        )
    return dict(table)


def _check_extra(lines: list[Any], at: str) -> tuple[str, ...]:
    if len(lines) > MAX_EXTRA_SLURM_LINES:
        raise ConfigError(f"{at}: extra_slurm_conf has {len(lines)} entries, at most "
                          f"{MAX_EXTRA_SLURM_LINES} are allowed", "keep only the settings you need")
    for item in lines:
        if not isinstance(item, str):
            raise ConfigError(f"{at}: extra_slurm_conf entry {item!r} must be a string",
                              'write each entry as "Key=Value"')
        if len(item) > MAX_EXTRA_SLURM_CHARS:
            raise ConfigError(f"{at}: an extra_slurm_conf entry has {len(item)} characters, at most "
                              f"{MAX_EXTRA_SLURM_CHARS} are allowed", "shorten it")
        if any(ord(c) < 32 or ord(c) == 127 for c in item):
            raise ConfigError(f"{at}: extra_slurm_conf entry {item!r} holds a newline or another "
                              "control character", "one entry is one slurm.conf line")
        key = item.split("=", 1)[0].strip().lower()
        if key in RESERVED_SLURM_KEYS:
            raise ConfigError(f"{at}: extra_slurm_conf entry {item!r} sets {key!r}, which shoal "
                              "sets itself", "it decides what runs as root or how daemons "
                              "authenticate; leave it to shoal")
    return tuple(lines)


def validate(raw: dict[str, Any], source: str = "defaults", text: str | None = None,
             cli_keys: frozenset[str] = frozenset()) -> ClusterConfig:
    """Turn a raw mapping (TOML table or CLI options) into a checked ClusterConfig.

    cli_keys: keys whose value came from a command-line option (errors name the option)."""
    table = _table_of(raw, source)
    cfg = ClusterConfig(source=source)
    values: dict[str, Any] = {}
    for key, value in table.items():
        at = _where(source, text, key)
        if key not in _KEYS:
            raise ConfigError(
                f"{at}: unknown key {key!r} = {_short(value)}",
                f"known keys: {', '.join(sorted(_KEYS))}",
            )
        want = _KEYS[key]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if value is None and key == "storage_mbit":
            ok = True
        if not ok:
            raise ConfigError(
                f"{at}: {key} = {_short(value)} must be of type {want.__name__}",
                "fix the value in the cluster config",
            )
        values[key] = _check_extra(value, at) if key == "extra_slurm_conf" else value
    cfg = replace(cfg, **values)

    def where(k: str) -> str:
        if k in cli_keys:
            return f"--{k.replace('_', '-')}"
        return _where(source, text, k)

    def said(k: str, v: object) -> str:
        """How the user wrote it: `--nodes 0`, or `FILE:LINE: nodes = 0`."""
        if k in cli_keys:
            return f"--{k.replace('_', '-')} {v}"
        return f"{_where(source, text, k)}: {k} = {v!r}"

    names.cluster_name(cfg.name, where("name"))
    if not 1 <= cfg.nodes <= MAX_NODES:
        raise ConfigError(
            f"{said('nodes', cfg.nodes)} is out of range: a virtual cluster has 1 to {MAX_NODES} "
            "compute nodes"
            + (" (the controller is not one of them)" if cfg.nodes < 1 else ""),
            "e.g. --nodes 4",
        )
    if cfg.network not in NETWORK_PROFILES:
        raise ConfigError(
            f"{where('network')}: network = {_short(cfg.network)} is not a known profile",
            f"known profiles: {', '.join(NETWORK_PROFILES)}",
        )
    if cfg.storage not in STORAGE_MODES:
        raise ConfigError(
            f"{where('storage')}: storage = {_short(cfg.storage)} is not a storage mode",
            f"use one of: {', '.join(STORAGE_MODES)}",
        )
    if cfg.health_source not in HEALTH_SOURCES:
        raise ConfigError(
            f"{where('health_source')}: health_source = {_short(cfg.health_source)} is not known",
            "use 'slurm' (slurmd timeouts) or 'state' (the state service alone)",
        )
    if cfg.health_source == "state" and not cfg.state_service:
        raise ConfigError(
            f"{where('health_source')}: health_source = 'state' needs state_service = true",
            "without the state service nothing would mark dead nodes DOWN",
        )
    if cfg.storage_mbit is not None and not 0 <= cfg.storage_mbit <= 1e6:
        raise ConfigError(
            f"{where('storage_mbit')}: storage_mbit = {cfg.storage_mbit:g} is out of range",
            "give the storage host's bandwidth in Mbit/s (0 = unshaped), e.g. 800",
        )
    if not 1 <= cfg.cpus_per_node <= MAX_CPUS_PER_NODE:
        raise ConfigError(
            f"{where('cpus_per_node')}: cpus_per_node = {cfg.cpus_per_node} is out of range "
            f"(1-{MAX_CPUS_PER_NODE})",
            f"use 1-{MAX_CPUS_PER_NODE}",
        )
    machine_mb = machine_memory_mb()
    total_cpus = cfg.nodes * cfg.cpus_per_node
    max_cpus = machine_mb // MIN_MB_PER_TASK
    if total_cpus > max_cpus:
        raise ConfigError(
            f"{where('cpus_per_node')}: {cfg.nodes} nodes x {cfg.cpus_per_node} CPUs = {total_cpus} "
            f"virtual CPUs, more than this machine can run one task each on (at most {max_cpus})",
            f"use at most {max(1, max_cpus // cfg.nodes)} cpus_per_node with {cfg.nodes} nodes",
        )
    if cfg.memory_mb_per_node < 64:
        raise ConfigError(
            f"{where('memory_mb_per_node')}: memory_mb_per_node = {cfg.memory_mb_per_node} is too small",
            "Slurm needs at least 64 MB per node",
        )
    if cfg.memory_mb_per_node > machine_mb:
        raise ConfigError(
            f"{where('memory_mb_per_node')}: memory_mb_per_node = {cfg.memory_mb_per_node} is more "
            f"than this machine has ({machine_mb} MB)",
            f"use at most {machine_mb}",
        )
    tmpfs = size_bytes(cfg.tmpfs_size)
    if tmpfs is None:
        raise ConfigError(
            f"{where('tmpfs_size')}: tmpfs_size = {_short(cfg.tmpfs_size)} is not a size",
            "write it like 512M or 2G",
        )
    if tmpfs > machine_mb << 20:
        raise ConfigError(
            f"{where('tmpfs_size')}: tmpfs_size = {cfg.tmpfs_size} is more than this machine's "
            f"memory ({machine_mb} MB): a node's /tmp lives in RAM",
            f"use at most {machine_mb // 1024}G",
        )
    return cfg


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def load(path: Path | None, overrides: dict[str, Any]) -> ClusterConfig:
    """Config file (optional) first, then command-line overrides; both validated."""
    raw: dict[str, Any] = {}
    text: str | None = None
    source = "defaults"
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}", "check the path") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x})",
                              "TOML files are UTF-8; save it as UTF-8") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}", "fix the syntax") from None
        source = str(path)
        raw = _table_of(raw, source)
    cfg = validate(raw, source, text)
    if overrides:
        merged = {k: getattr(cfg, k) for k in _KEYS}
        merged["extra_slurm_conf"] = list(cfg.extra_slurm_conf)
        given = {k: v for k, v in overrides.items() if v is not None}
        merged.update(given)
        label = "command line" if path is None else f"{source} + command line"
        cfg = validate(merged, label, text, frozenset(given))
    return cfg
