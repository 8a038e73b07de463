"""`shoal dist` and `shoal run` commands."""

from __future__ import annotations

import click


@click.group(invoke_without_command=True)
def dist() -> None:
    """Stage an image on every node of the current allocation."""


@click.command("run")
def run_cmd() -> None:
    """Stage an image and run a command in it on every node."""
