"""`shoal image import` of images built elsewhere: a multi-layer docker-archive and OCI archive with
whiteouts (made here, layer by layer), a root fs tarball, a Charliecloud directory, a SquashFS file.
Every source gives the same tree in the store, with a manifest, and the image runs in ch-run."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.cli import jsonout
from shoal.cli.main import main
from shoal.errors import ImageError
from shoal.images import importer

BUSYBOX = Path("/bin/busybox")
pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static missing")


def _add(tf: tarfile.TarFile, name: str, data: bytes | None = None, *, link: str | None = None,
         mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> None:
    ti = tarfile.TarInfo(name)
    ti.mode = mode
    if link is not None:
        ti.type, ti.linkname = tarfile.SYMTYPE, link
    elif data is None:
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    else:
        ti.type, ti.size = kind, len(data)
    tf.addfile(ti, io.BytesIO(data) if data is not None else None)


def _layer(entries: list[tuple[str, bytes | None, str | None]], gz: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data, link in entries:
            _add(tf, name, data, link=link, mode=0o755 if name.startswith("bin/") else 0o644)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw


BB = BUSYBOX.read_bytes()
LAYERS: list[list[tuple[str, bytes | None, str | None]]] = [
    [("bin", None, None), ("bin/busybox", BB, None), ("bin/sh", None, "busybox"),
     ("bin/cat", None, "busybox"), ("etc", None, None), ("etc/passwd", b"root:x:0:0::/:/bin/sh\n", None),
     ("usr", None, None), ("usr/lib", None, None), ("lib", None, "usr/lib"),
     ("data", None, None), ("data/keep", b"keep\n", None), ("data/gone", b"gone\n", None),
     ("data/dir-gone", None, None), ("data/dir-gone/f", b"x", None),
     ("opq", None, None), ("opq/a", b"a", None), ("opq/b", b"b", None),
     ("esc", None, "/tmp/shoal-import-must-not-exist")],
    [("data", None, None), ("data/.wh.gone", b"", None), ("data/.wh.dir-gone", b"", None),
     ("data/new", b"new layer\n", None), ("opq", None, None), ("opq/.wh..wh..opq", b"", None),
     ("opq/c", b"c", None), ("lib/libx.so", b"lib", None),
     ("esc/pwned", b"no", None)],
]


def _expect(tree: Path) -> None:
    assert (tree / "data/keep").read_text() == "keep\n"
    assert (tree / "data/new").read_text() == "new layer\n"
    assert not (tree / "data/gone").exists() and not (tree / "data/dir-gone").exists()
    assert sorted(os.listdir(tree / "opq")) == ["c"]
    assert (tree / "usr/lib/libx.so").read_text() == "lib" and (tree / "lib").is_symlink()
    assert not Path("/tmp/shoal-import-must-not-exist").exists()
    assert (tree / "esc/pwned").is_file() and not (tree / "esc").is_symlink()
    assert (tree / "dev").is_dir() and (tree / "etc/hosts").exists()


def docker_archive(path: Path) -> None:
    with tarfile.open(path, "w") as tf:
        names = []
        for i, entries in enumerate(LAYERS):
            blob = _layer(entries, gz=False)
            names.append(f"l{i}/layer.tar")
            _add(tf, f"l{i}", None)
            _add(tf, names[-1], blob)
        _add(tf, "manifest.json", json.dumps([{"Config": "c.json", "RepoTags": ["t:1"],
                                               "Layers": names}]).encode())
        _add(tf, "c.json", b"{}")


def oci_archive(path: Path) -> None:
    blobs: dict[str, bytes] = {}

    def put(data: bytes) -> dict[str, object]:
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return {"digest": f"sha256:{d}", "size": len(data)}

    layers = [put(_layer(e, gz=True)) | {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}
              for e in LAYERS]
    manifest = put(json.dumps({"schemaVersion": 2, "config": put(b"{}"), "layers": layers}).encode())
    index = {"schemaVersion": 2, "manifests": [
        manifest | {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "platform": {"architecture": "amd64", "os": "linux"}}]}
    with tarfile.open(path, "w") as tf:
        _add(tf, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add(tf, "index.json", json.dumps(index).encode())
        for d, data in blobs.items():
            _add(tf, f"blobs/sha256/{d}", data)


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "store"
    monkeypatch.setenv("SHOAL_STORE", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_layered_archives_flatten_with_whiteouts(tmp_path: Path, store: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    digests = {}
    for kind, make in (("docker-archive", docker_archive), ("oci", oci_archive)):
        src = tmp_path / f"{kind}.tar"
        make(src)
        assert importer.detect(src) == kind
        assert main(["image", "import", str(src), f"imp-{kind}", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert jsonout.problems({k: v for k, v in doc.items() if k not in ("format", "kind")},
                                jsonout.SCHEMAS["image.import"]) == []
        assert doc["source_format"] == kind and doc["image"]["extra"]["source_format"] == kind
        entry = store / f"imp-{kind}"
        assert json.loads((entry / "manifest.json").read_text())["tree_digest"] == \
            doc["image"]["tree_digest"]
        assert set(doc["image"]["exports"]) == {"tar.gz", "squashfs", "dir"}
        _expect(entry / doc["image"]["exports"]["dir"])
        digests[kind] = doc["image"]["tree_digest"]
    assert digests["docker-archive"] == digests["oci"]
    # the imported image runs
    if shutil.which("ch-run"):
        tree = store / "imp-oci" / "dir"
        out = subprocess.run(["ch-run", str(tree), "--", "/bin/cat", "/data/new"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "USER": os.environ.get("USER", "root")})
        assert out.stdout == "new layer\n", out.stderr


def test_flat_sources_give_the_same_tree(tmp_path: Path, store: Path) -> None:
    src = tmp_path / "d.tar"
    docker_archive(src)
    m, _ = importer.import_image("base", src)
    tree = store / "base" / "dir"
    # a root fs tarball wrapped in one directory (as ch-convert writes it), a directory, a SquashFS
    tgz = tmp_path / "flat.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tree, arcname="img")
    sq = tmp_path / "img.sqfs"
    subprocess.run(["mksquashfs", str(tree), str(sq), "-quiet", "-no-progress"], check=True)
    for name, source, kind in (("flat", tgz, "tar"), ("fromdir", tree, "dir"),
                               ("fromsq", sq, "squashfs")):
        got, detected = importer.import_image(name, source)
        assert detected == kind
        assert got.tree_digest == m.tree_digest, kind
        assert got.extra["imported_from"] == str(source.resolve())


def test_hostile_archives_are_refused(tmp_path: Path, store: Path) -> None:
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        _add(tf, "bin", None)
        _add(tf, "bin/sh", b"x")
        _add(tf, "../evil", b"x")
    with pytest.raises(ImageError, match="outside the image"):
        importer.import_image("bad", bad)
    assert not (tmp_path / "evil").exists() and not (store / "bad").exists()
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="neither a SquashFS file nor a tar"):
        importer.import_image("junk", junk)
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tf:
        _add(tf, "etc", None)
    with pytest.raises(ImageError, match="not a root file system"):
        importer.import_image("empty", empty)
