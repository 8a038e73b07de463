"""The built-in images shoal knows how to build, by name.

Every ``shoal/images/recipes/NAME/`` that holds a Dockerfile: ``layer1`` (the compute-node image)
and the workload images (mpihello, lammps, pynamic). They ship inside the package, so an installed
shoal (not only a checkout) can build them. All are built on the same cached Debian 12 base by
``build_named``.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from shoal import names, paths
from shoal.errors import ImageError
from shoal.images.build import BuiltImage, build_image, image_dir, read_marker, write_marker
from shoal.images.layer1 import ensure_layer1
from shoal.images.store import add_to_store, load_manifest, manifest_path
from shoal.images.synth import SynthReport, synth_image

NAME_RE = names.IMAGE_NAME_RE


@dataclass(frozen=True)
class Recipe:
    name: str
    dockerfile: Path
    context: Path


def known_images() -> dict[str, Recipe]:
    found: dict[str, Recipe] = {}
    root = paths.recipes_dir()
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / "Dockerfile").is_file() and names.is_image_name(d.name):
                found[d.name] = Recipe(d.name, d / "Dockerfile", d)
    return found


def recipe(name: str) -> Recipe:
    known = known_images()
    if name not in known:
        listed = ", ".join(sorted(known)) or "(none)"
        raise ImageError(
            f"unknown image '{name}'; known images: {listed}",
            f"add {paths.recipes_dir()}/{name}/Dockerfile to define it",
        )
    return known[name]


def validate_name(name: str) -> None:
    names.image_name(name)


def build_named(name: str, rebuild: bool = False) -> BuiltImage:
    """Build a built-in image by name (layer1 gets its post-processing)."""
    r = recipe(name)
    if name == "layer1":
        img = ensure_layer1(rebuild=rebuild)
        return BuiltImage(name, img.path, img.hash, img.cached, img.seconds)
    return build_image(name, r.dockerfile, r.context, rebuild=rebuild)


def stored_in_ch(name: str) -> bool:
    """Is NAME an image in shoal's ch-image storage (built-in or made another way, e.g. synth)?"""
    return name != "shoal-base" and image_dir(name).is_dir()


def resolve(name: str) -> BuiltImage:
    """The tree of image NAME: built-in images are built (cached); other images already in
    ch-image storage (synthesized ones, say) are taken as they are."""
    validate_name(name)
    if name in known_images():
        return build_named(name)
    if stored_in_ch(name):
        marker = read_marker(name) or {}
        h = marker.get("inputs_hash")
        return BuiltImage(name, image_dir(name), str(h) if h else "unknown", True, 0.0)
    recipe(name)  # raises: unknown image, listing the known ones
    raise AssertionError("unreachable")


def ensure_in_store(name: str) -> str:
    """Image NAME built (cached) and exported into the store, unless the store already holds
    this very build (same inputs hash). Returns the name."""
    built = resolve(name)
    if manifest_path(name).is_file():
        try:
            if load_manifest(name).inputs_hash == built.inputs_hash:
                return name
        except ImageError:
            pass  # unreadable manifest: export again
    add_to_store(name, built.path, built.inputs_hash)
    return name


def synthesize(name: str, profile: str, *, scale: float = 1.0, seed: int = 0,
               base_name: str = "mpihello", content: str = "random",
               force: bool = False) -> tuple[Path, SynthReport]:
    """Synthesize image NAME (a controlled file population under /data on image BASE_NAME) into
    ch-image storage, with a marker whose inputs hash names profile, scale, seed, content and base;
    returns its tree and what was made. ``like:IMAGE`` profiles copy IMAGE's size distribution."""
    validate_name(name)
    if name in known_images():
        raise ImageError(f"{name!r} is a built-in image", "choose another name for the synthetic image")
    base = resolve(base_name)
    if profile.startswith("like:"):
        profile = "like:" + str(resolve(profile.removeprefix("like:")).path)
    dest = image_dir(name)
    if dest.exists():
        if not force:
            raise ImageError(f"image {name!r} exists", "use --force to replace it, or another name")
        shutil.rmtree(dest)
    rep = synth_image(profile, dest, scale, seed, base_dir=base.path,
                      content=content)  # type: ignore[arg-type]
    inputs = hashlib.sha256(
        f"synth {profile} {scale} {seed} {content} base {base.inputs_hash}".encode()
    ).hexdigest()[:24]
    write_marker(name, {"inputs_hash": inputs, "synth": rep.to_dict()})
    return dest, rep
