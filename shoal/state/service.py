"""`shoal state serve`: the engine, its Slurm bridge and the API on their listeners, until SIGTERM.

Listeners: a unix socket in a root-only directory (the host's admin and the CLI) and, optionally,
TCP on one address of the cluster network (the nodes' event listeners; reads from inside the
cluster). A wildcard address is refused: the service must never listen on every interface of the
host it runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from shoal.errors import ConfigError, PrivilegeError
from shoal.slurm.client import SlurmClient
from shoal.state.api import make_app
from shoal.state.backend import Backend
from shoal.state.bridge import SlurmBridge
from shoal.state.engine import Engine, EngineConfig
from shoal.state.store import Store

log = logging.getLogger("shoal.state")

DEFAULT_PORT = 6830


@dataclass
class ServiceConfig:
    db: Path
    socket: Path | None = None
    listen: tuple[str, int] | None = None
    admin_uids: set[int] = field(default_factory=lambda: {0})
    munge_socket: str | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)


def parse_listen(text: str) -> tuple[str, int]:
    """'ADDR:PORT' (or 'ADDR' for the default port) for TCP; wildcards are refused."""
    host, sep, port_s = text.rpartition(":")
    if not sep:
        host, port_s = text, str(DEFAULT_PORT)
    host = host.strip("[]")
    try:
        addr = ipaddress.ip_address(host)
        port = int(port_s)
    except ValueError:
        raise ConfigError(
            f"--listen {text!r} is not ADDRESS:PORT with an IP address", f"e.g. 10.250.1.2:{DEFAULT_PORT}"
        ) from None
    if addr.is_unspecified:
        raise ConfigError(
            f"--listen {text!r} would listen on every interface of this host",
            "give the address of the cluster network (or use only the unix socket)",
        )
    if not 0 < port < 65536:
        raise ConfigError(f"--listen {text!r}: port out of range")
    return str(addr), port


def secure_socket_dir(sock: Path) -> None:
    """The socket's directory: ours, a real directory (not a symlink), no access for others."""
    d = sock.parent
    with contextlib.suppress(FileExistsError):
        os.mkdir(d, 0o700)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PrivilegeError(
            f"{d} must be a directory owned by uid {os.geteuid()} with mode 0700",
            "remove it; the service creates it itself",
        )
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(sock).st_mode):
            raise PrivilegeError(f"{sock} exists and is not a socket", "remove it")
        os.unlink(sock)  # a stale socket of a killed service


async def run_service(
    cfg: ServiceConfig,
    backend: Backend,
    client: SlurmClient,
    on_ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    store = Store(cfg.db)
    engine = Engine(store, SlurmBridge(client), backend, cfg.engine)
    app = make_app(engine, cfg.admin_uids, cfg.munge_socket)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await runner.setup()
    try:
        await engine.start()
        if cfg.socket is not None:
            secure_socket_dir(cfg.socket)
            await web.UnixSite(runner, str(cfg.socket)).start()
            os.chmod(cfg.socket, 0o600)
        if cfg.listen is not None:
            await web.TCPSite(runner, cfg.listen[0], cfg.listen[1], reuse_address=True).start()
        log.info("serving %d nodes", len(engine.nodes))
        if on_ready is not None:
            on_ready()
        await stop.wait()
    finally:
        await engine.stop()
        await runner.cleanup()
        store.close()
        if cfg.socket is not None:
            with contextlib.suppress(OSError):
                os.unlink(cfg.socket)
