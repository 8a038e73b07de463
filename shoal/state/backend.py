"""What the engine needs from the place the nodes run: a Backend.

The engine works with no backend powers at all (PlainBackend: a real site with a node list and
scontrol; discovery then comes from the nodes' event listeners and Slurm). A backend that can do
more says so in `capabilities`, and only then does the engine offer the transitions that need it:

    watch    it pushes each node's liveness (and the image it runs) as soon as it changes
    power    it can start a stopped node (power_on) and stop one (power_off)
    swap     it can restart a node on another image (swap)
    restart  it can start a node's supervisord program again (restart_program)

The virtual cluster's backend lives on the cluster side (shoal/cluster/statebackend.py) and is
handed to the engine; this package never imports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from shoal.errors import ShoalError

# report(node, alive, image): alive None = unknown; image "" = unknown
Report = Callable[[str, bool | None, str], None]


class BackendError(ShoalError):
    pass


class Backend(Protocol):
    capabilities: frozenset[str]

    def nodes(self) -> dict[str, str]:
        """Node name -> address its events come from ("" when not known)."""
        ...

    async def watch(self, report: Report) -> None:
        """Report liveness changes until cancelled (only with the 'watch' capability)."""
        ...

    def resolve_image(self, ref: str) -> str:
        """The image id a reference such as layer1:HASH names; BackendError when there is none."""
        ...

    def power_on(self, node: str, image: str) -> None: ...

    def power_off(self, node: str) -> None: ...

    def swap(self, node: str, image: str) -> None: ...

    def restart_program(self, node: str, program: str) -> None: ...


class PlainBackend:
    """A site's nodes by name: no watch, no power, no swap (the engine then bridges to Slurm only)."""

    capabilities: frozenset[str] = frozenset()

    def __init__(self, nodes: dict[str, str]) -> None:
        self._nodes = dict(nodes)

    def nodes(self) -> dict[str, str]:
        return dict(self._nodes)

    async def watch(self, report: Report) -> None:
        await asyncio.Event().wait()  # nothing to watch: sleep until cancelled

    def resolve_image(self, ref: str) -> str:
        raise BackendError(
            f"this site's backend cannot change images (asked for {ref!r})",
            "image swaps need a backend with the 'swap' capability",
        )

    def power_on(self, node: str, image: str) -> None:
        raise BackendError("this backend cannot power nodes")

    def power_off(self, node: str) -> None:
        raise BackendError("this backend cannot power nodes")

    def swap(self, node: str, image: str) -> None:
        raise BackendError("this backend cannot swap images")

    def restart_program(self, node: str, program: str) -> None:
        raise BackendError("this backend cannot restart programs")
