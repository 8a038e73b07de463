"""Publishing the node agent bundle in the store: once per content hash, old ones pruned."""

from __future__ import annotations

import os
import time
from pathlib import Path

from shoal import bundle


def test_publish_writes_once_and_prunes_only_old_bundles(tmp_path: Path) -> None:
    shoal_dir = tmp_path / ".shoal"
    shoal_dir.mkdir()
    month_ago = time.time() - bundle.PRUNE_AFTER_S - 60
    old = shoal_dir / "agent-0123456789abcdef.pyz"
    recent = shoal_dir / "agent-fedcba9876543210.pyz"
    other = shoal_dir / "agent-notahash.pyz"  # not a bundle name: not ours to remove
    for f in (old, recent, other):
        f.write_bytes(b"x")
    os.utime(old, (month_ago, month_ago))
    os.utime(other, (month_ago, month_ago))
    # a planted link to a file elsewhere is never followed, and not removed as a bundle
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    link = shoal_dir / "agent-aaaaaaaaaaaaaaaa.pyz"
    link.symlink_to(target)
    os.utime(link, (month_ago, month_ago), follow_symlinks=False)

    name = bundle.publish(tmp_path)
    assert (shoal_dir / name).read_bytes() == bundle.bundle_bytes()
    assert not old.exists() and recent.exists() and other.exists() and link.is_symlink()
    assert target.read_bytes() == b"keep"

    # published again: the current one is marked in use, so it is never the old one
    os.utime(shoal_dir / name, (month_ago, month_ago))
    assert bundle.publish(tmp_path) == name
    assert (shoal_dir / name).stat().st_mtime > month_ago + 3600
    # a month on, without a publish, both bundles go; the odd name and the link stay
    later = time.time() + bundle.PRUNE_AFTER_S + 60
    assert set(bundle.prune(shoal_dir, keep="x", now=later)) == {name, recent.name}
    assert other.exists() and link.is_symlink()
