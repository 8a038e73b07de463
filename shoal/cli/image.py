"""`shoal image` commands: build, export, list, verify, rm (the image store)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from shoal import paths
from shoal.cli import jsonout
from shoal.cli.options import LazyConsole, json_option
from shoal.errors import ImageError

console = LazyConsole()

FORMAT_CHOICES = ["tar.gz", "squashfs", "dir"]


@click.group()
def image() -> None:
    """Build container images and manage the image store."""


@image.command("build")
@click.argument("name")
@click.option("--rebuild", is_flag=True, help="Build even if the cached build is up to date.")
def build_cmd(name: str, rebuild: bool) -> None:
    """Build built-in image NAME (shoal/images/recipes/NAME/Dockerfile), cached by input hash."""
    from shoal.fsutil import dir_size
    from shoal.images.catalog import build_named

    built = build_named(name, rebuild=rebuild)
    origin = "cache" if built.cached else f"built in {built.seconds:.1f} s"
    size = dir_size(built.path)
    console.print(f"{built.name}: {built.path}")
    console.print(f"  size {size / 1e6:.1f} MB, inputs {built.inputs_hash}, from {origin}")


@image.command("export")
@click.argument("name")
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(FORMAT_CHOICES),
    help="Export format (repeatable); default: all three.",
)
@click.option(
    "--to",
    "dest",
    type=click.Path(file_okay=False),
    help="Write plain exports into this directory instead of the image store.",
)
@json_option
def export_cmd(name: str, formats: tuple[str, ...], dest: str | None, as_json: bool) -> None:
    """Export image NAME as tar.gz / SquashFS / directory (default: into the image store)."""
    from pathlib import Path

    from shoal.images.catalog import resolve
    from shoal.images.store import ALL_FORMATS, ExportFormat, add_to_store, entry_dir, export_to

    fmts = [ExportFormat(f) for f in dict.fromkeys(formats)] or list(ALL_FORMATS)
    built = resolve(name)
    if dest is not None:
        for p in export_to(built.path, name, fmts, Path(dest)):
            console.print(f"{p}  {_size(p) / 1e6:.1f} MB")
        return
    m = add_to_store(name, built.path, built.inputs_hash, fmts)
    if as_json:
        jsonout.emit("image.export", {"store": str(paths.store_root()), "image": m.to_json()})
        return
    table = Table(title=f"{name} in {entry_dir(name)}")
    table.add_column("format")
    table.add_column("path")
    table.add_column("MB", justify="right")
    table.add_column("sha256")
    for fmt, fname in m.exports.items():
        p = entry_dir(name) / fname
        sha = m.files.get(fname, f"tree {m.tree_digest}")
        table.add_row(fmt, str(p), f"{_size(p) / 1e6:.1f}", sha[:21])
    console.print(table)
    console.print(f"{m.file_count} files, {m.bytes / 1e6:.1f} MB, tree digest {m.tree_digest}")


@image.command("import")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("name")
@click.option("--format", "fmt", default="auto", show_default=True,
              type=click.Choice(["auto", "oci", "docker-archive", "tar", "dir", "squashfs"]),
              help="What SOURCE is (auto: recognised by its content).")
@json_option
def import_cmd(source: Path, name: str, fmt: str, as_json: bool) -> None:
    """Import an image built elsewhere as NAME: an OCI or docker-archive tarball (layers and
    whiteouts applied), a root fs tarball, a Charliecloud directory or a SquashFS file. It goes
    into the store in every format, with a manifest, like `shoal image export`."""
    from shoal.images.importer import import_image
    from shoal.images.store import entry_dir

    with console.status(f"importing {source} as {name} ..."):
        m, kind = import_image(name, source, fmt)
    if as_json:
        jsonout.emit("image.import", {"store": str(paths.store_root()), "source": str(source),
                                      "source_format": kind, "image": m.to_json()})
        return
    console.print(f"{name}: imported from {source} ({kind}) into {entry_dir(name)}")
    console.print(f"  {m.file_count} files, {m.bytes / 1e6:.1f} MB, tree digest {m.tree_digest}, "
                  f"exports: {', '.join(m.exports)}")


@image.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """List the images in the store."""
    from shoal.images.store import list_manifests

    manifests = list_manifests()
    if as_json:
        jsonout.emit("image.list", {"store": str(paths.store_root()),
                                    "images": [m.to_json() for m in manifests]})
        return
    if not manifests:
        console.print(f"the image store {paths.store_root()} is empty")
        return
    table = Table(title=f"image store {paths.store_root()}")
    for col, just in [
        ("name", "left"),
        ("formats", "left"),
        ("tree MB", "right"),
        ("files", "right"),
        ("tar.gz MB", "right"),
        ("sqfs MB", "right"),
        ("created", "left"),
        ("tree digest", "left"),
    ]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for m in manifests:
        tar = m.sizes.get(f"{m.name}.tar.gz")
        sq = m.sizes.get(f"{m.name}.sqfs")
        table.add_row(
            m.name,
            ",".join(m.exports),
            f"{m.bytes / 1e6:.1f}",
            str(m.file_count),
            f"{tar / 1e6:.1f}" if tar is not None else "-",
            f"{sq / 1e6:.1f}" if sq is not None else "-",
            m.created,
            m.tree_digest[:16],
        )
    console.print(table)


@image.command("verify")
@click.argument("name")
@click.option("--no-dir", is_flag=True, help="Skip re-digesting the unpacked directory.")
@json_option
def verify_cmd(name: str, no_dir: bool, as_json: bool) -> None:
    """Re-hash the stored exports of NAME against its manifest."""
    from shoal.images.store import verify

    m, problems = verify(name, check_dir=not no_dir)
    if as_json:
        jsonout.emit("image.verify", {"name": name, "ok": not problems, "problems": [
            {"what": p.what, "path": str(p.path), "detail": str(p.detail)} for p in problems]})
    if not problems:
        checked = len(m.files) + (0 if no_dir or "dir" not in m.exports else 1)
        console.print(f"{name}: OK ({checked} exports match the manifest)")
        return
    for p in problems:
        console.print(f"[red]{p.what}[/]: {p.path} ({p.detail})")
    names = ", ".join(f"{p.path} ({p.what})" for p in problems)
    raise ImageError(
        f"{name}: {len(problems)} export(s) do not match the manifest: {names}",
        f"re-export it: shoal image export {name}  (or remove it: shoal image rm {name})",
    )


@image.command("rm")
@click.argument("name")
def rm_cmd(name: str) -> None:
    """Remove image NAME from the store."""
    from shoal.images.store import entry_dir, remove

    where = entry_dir(name)
    remove(name)
    console.print(f"removed {where}")


def _size(p: object) -> int:
    from pathlib import Path

    from shoal.fsutil import dir_size

    path = Path(str(p))
    return dir_size(path) if path.is_dir() else path.stat().st_size


@image.command("synth")
@click.argument("name")
@click.option("--profile", required=True,
              help="many-small, few-large, or like:IMAGE (copy the size distribution of IMAGE).")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Scale the file count.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--base", "base_name", default="mpihello", show_default=True,
              help="Image whose tree the synthetic files are layered on (needs python3 for the walks).")
@click.option("--content", type=click.Choice(["random", "compressible"]), default="random",
              show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing image of that name.")
def synth_cmd(name: str, profile: str, scale: float, seed: int, base_name: str, content: str,
              force: bool) -> None:
    """Synthesize image NAME with a controlled file population under /data; export it with
    `shoal image export NAME`."""
    from shoal.images.catalog import synthesize

    with console.status(f"synthesizing {name} ({profile}) ..."):
        dest, rep = synthesize(name, profile, scale=scale, seed=seed, base_name=base_name,
                               content=content, force=force)
    table = Table(title=f"synthetic image {name} (/data of {dest})")
    for col in ("profile", "files", "dirs", "bytes", "min size", "max size", "seed"):
        table.add_column(col, justify="right")
    table.add_row(rep.profile, str(rep.files), str(rep.dirs), str(rep.bytes), str(rep.min_size),
                  str(rep.max_size), str(rep.seed))
    console.print(table)
    console.print(f"export it: shoal image export {name}")
