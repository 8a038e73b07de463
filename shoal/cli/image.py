"""`shoal image` commands: build, export, list, verify, rm (the image store)."""

from __future__ import annotations

import click
from rich.console import Console

from shoal.images.build import dir_size

console = Console(highlight=False)


@click.group()
def image() -> None:
    """Build container images and manage the image store."""


@image.command("build")
@click.argument("name")
@click.option("--rebuild", is_flag=True, help="Build even if the cached build is up to date.")
def build_cmd(name: str, rebuild: bool) -> None:
    """Build built-in image NAME (layer1 or images/NAME/Dockerfile), cached by input hash."""
    from shoal.images.catalog import build_named

    built = build_named(name, rebuild=rebuild)
    origin = "cache" if built.cached else f"built in {built.seconds:.1f} s"
    size = dir_size(built.path)
    console.print(f"{built.name}: {built.path}")
    console.print(f"  size {size / 1e6:.1f} MB, inputs {built.inputs_hash}, from {origin}")
