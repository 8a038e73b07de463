"""Image build logic without building: input hashing, caching, the ch-image argv, errors."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from shoal import paths
from shoal.errors import CommandError, ConfigError, ImageError
from shoal.images import base, build, catalog
from shoal.runner import Completed, Runner, use_runner

CH_STDERR_FAIL = (
    "  1. FROM shoal-base\ncopying image ...\n"
    "will use --force: debderiv: Debian 9+, Ubuntu 14+, or other derivative\n"
    "  2. RUN.F echo hello\n  3. RUN.F apt-get install -y nosuchpkg\n"
    "error: build failed: RUN command exited with 100\n"
)


class FakeRunner(Runner):
    """Records argv/env; 'ch-image build' creates the image dir (or fails if told to)."""

    def __init__(self, fail_build: bool = False) -> None:
        super().__init__()
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.fail_build = fail_build

    def run(self, argv: Sequence[str], **kw: Any) -> Completed:
        args = [os.fspath(a) for a in argv]
        env: Mapping[str, str] = kw.get("env") or {}
        self.calls.append((args, dict(env)))
        if "build" in args or "import" in args:
            name = args[args.index("-t") + 1] if "-t" in args else args[-1]
            if self.fail_build and "build" in args:
                raise CommandError(args, 1, "hello\nE: Unable to locate package\n", CH_STDERR_FAIL)
            d = build.image_dir(name)
            (d / "etc").mkdir(parents=True, exist_ok=True)
            (d / "etc" / "debian_version").write_text("12.0\n")
        return Completed(args, 0, "", "", 0.0)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("SHOAL_CACHE", str(tmp_path / "cache"))
    fake_base = tmp_path / "cache" / "base" / "0123456789abcdef"
    (fake_base / "etc").mkdir(parents=True)
    monkeypatch.setattr(build, "ensure_base", lambda: fake_base)
    yield tmp_path / "cache"


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    d = tmp_path / "img"
    d.mkdir()
    (d / "Dockerfile").write_text("FROM shoal-base\nRUN true\n")
    (d / "prog.c").write_text("int main(void){return 0;}\n")
    return d


def test_inputs_hash_follows_every_input(recipe_dir: Path) -> None:
    df = recipe_dir / "Dockerfile"
    h0 = build.inputs_hash(df, recipe_dir, "base1")
    assert build.inputs_hash(df, recipe_dir, "base1") == h0
    assert build.inputs_hash(df, recipe_dir, "base2") != h0
    assert build.inputs_hash(df, recipe_dir, "base1", extra="post-2") != h0
    (recipe_dir / "prog.c").write_text("int main(void){return 1;}\n")
    h1 = build.inputs_hash(df, recipe_dir, "base1")
    assert h1 != h0
    (recipe_dir / "prog.c").chmod(0o755)
    h2 = build.inputs_hash(df, recipe_dir, "base1")
    assert h2 != h1
    (recipe_dir / "sub").mkdir()
    (recipe_dir / "sub" / "__pycache__").mkdir()
    (recipe_dir / "sub" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    h3 = build.inputs_hash(df, recipe_dir, "base1")
    assert h3 != h2  # the new directory counts ...
    (recipe_dir / "sub" / "__pycache__" / "x.pyc").write_bytes(b"other junk")
    assert build.inputs_hash(df, recipe_dir, "base1") == h3  # ... bytecode caches do not


def test_build_runs_ch_image_once_then_hits_the_cache(cache: Path, recipe_dir: Path) -> None:
    fake = FakeRunner()
    with use_runner(fake):
        first = build.build_image("demo", recipe_dir / "Dockerfile", recipe_dir)
        second = build.build_image("demo", recipe_dir / "Dockerfile", recipe_dir)
    assert not first.cached and second.cached
    assert first.path == second.path == cache / "ch" / "img" / "demo"
    assert first.inputs_hash == second.inputs_hash
    verbs = [c[0][2:] for c in fake.calls]
    assert verbs[0][:1] == ["import"]
    assert verbs[1][:4] == ["--no-cache", "build", "--force", "-t"]
    assert len(fake.calls) == 2  # one import, one build; the second call built nothing
    for argv, env in fake.calls:
        assert argv[:2] == ["/usr/bin/python3", build.CH_IMAGE_SCRIPT]
        assert env["CH_IMAGE_STORAGE"] == str(cache / "ch")
        assert env["USER"]
    marker = json.loads((cache / "ch-built" / "demo.json").read_text())
    assert marker["inputs_hash"] == first.inputs_hash


def test_changed_input_or_missing_tree_rebuilds(cache: Path, recipe_dir: Path) -> None:
    fake = FakeRunner()
    with use_runner(fake):
        build.build_image("demo", recipe_dir / "Dockerfile", recipe_dir)
        (recipe_dir / "Dockerfile").write_text("FROM shoal-base\nRUN echo changed\n")
        again = build.build_image("demo", recipe_dir / "Dockerfile", recipe_dir)
        assert not again.cached
        build.image_dir("demo").rename(cache / "elsewhere")
        third = build.build_image("demo", recipe_dir / "Dockerfile", recipe_dir)
        assert not third.cached
    assert sum("build" in c[0] for c in fake.calls) == 3


def test_post_process_failure_means_no_cache_marker(cache: Path, recipe_dir: Path) -> None:
    def post(tree: Path) -> None:
        raise ImageError("post failed")

    with use_runner(FakeRunner()), pytest.raises(ImageError, match="post failed"):
        build.build_image("demo", recipe_dir / "Dockerfile", recipe_dir, post=post)
    assert not (cache / "ch-built" / "demo.json").exists()


def test_build_failure_names_the_step_and_output(cache: Path, recipe_dir: Path) -> None:
    with use_runner(FakeRunner(fail_build=True)), pytest.raises(ImageError) as info:
        build.build_image("demo", recipe_dir / "Dockerfile", recipe_dir)
    msg = info.value.message
    assert "step 3: RUN apt-get install -y nosuchpkg" in msg
    assert "RUN command exited with 100" in msg
    assert "Unable to locate package" in msg
    assert info.value.hint is not None and "demo.log" in info.value.hint
    assert (cache / "ch-built" / "demo.log").read_text().count("nosuchpkg") >= 1
    assert not build.image_dir("demo").exists()


def test_failing_step_without_steps() -> None:
    assert build.failing_step("error: can't parse Dockerfile\n") is None


def test_unknown_image_lists_the_known_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    for n in ("mpihello", "lammps", "layer1"):
        (recipes / n).mkdir(parents=True)
        (recipes / n / "Dockerfile").write_text("FROM shoal-base\n")
    (recipes / "nodockerfile").mkdir()
    monkeypatch.setattr(paths, "recipes_dir", lambda: recipes)
    assert sorted(catalog.known_images()) == ["lammps", "layer1", "mpihello"]
    with pytest.raises(ImageError, match="known images: lammps, layer1, mpihello"):
        catalog.recipe("nosuch")
    with pytest.raises(ConfigError, match="not a valid image name"):
        catalog.validate_name("../etc")


def test_real_repo_defines_the_builtin_images() -> None:
    assert {"layer1", "mpihello", "lammps"} <= set(catalog.known_images())


# --- the debootstrap base ---------------------------------------------------------------------

SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirrors_come_from_the_hosts_sources(tmp_path: Path) -> None:
    f = tmp_path / "debian.sources"
    f.write_text(SOURCES)
    m = base.read_mirrors(f)
    assert m == base.Mirrors("http://mirror.example/debian", "http://mirror.example/debian-security")
    assert "bookworm-security" in base.apt_sources(m)
    assert base.read_mirrors(tmp_path / "missing").main == base.FALLBACK_MIRROR
    other = base.Mirrors("http://other/debian", m.security)
    assert base.base_hash(m) != base.base_hash(other)


def test_finish_tree_empties_dev_and_adds_run_time_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dev" / "pts").mkdir(parents=True)
    (root / "dev" / "zero").write_bytes(b"")  # stands in for the device node
    (root / "dev" / "fd").symlink_to("/proc/self/fd")
    (root / "etc" / "apt" / "apt.conf.d").mkdir(parents=True)
    (root / "etc" / "apt" / "sources.list").write_text("deb http://x bookworm main\n")
    (root / "etc" / "resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    base.finish_tree(root, base.Mirrors("http://m/debian", "http://m/debian-security"))
    assert list((root / "dev").iterdir()) == []
    assert "localhost" in (root / "etc" / "hosts").read_text()
    assert not (root / "etc" / "resolv.conf").is_symlink()
    assert (root / "etc" / "resolv.conf").is_file()
    assert not (root / "etc" / "apt" / "sources.list").exists()
    assert "http://m/debian" in (root / "etc/apt/sources.list.d/debian.sources").read_text()
    assert "path-exclude /usr/share/man/*" in (root / "etc/dpkg/dpkg.cfg.d/01shoal-nodoc").read_text()


def test_build_refuses_early_when_space_is_short(
    cache: Path, recipe_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build, "BUILD_SPACE", 1 << 62)
    fake = FakeRunner()
    with use_runner(fake), pytest.raises(ImageError, match=r"no space left under .* needs about"):
        build.build_image("demo", recipe_dir / "Dockerfile", recipe_dir)
    assert not any("build" in c[0] for c in fake.calls)
