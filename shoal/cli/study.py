"""`shoal study` commands."""

from __future__ import annotations

import click


@click.group()
def study() -> None:
    """study commands."""
