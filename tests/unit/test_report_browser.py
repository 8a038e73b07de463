"""report.html as a person sees it, in a real browser (headless Chromium): every plot image loads
with a non-zero natural size, the recommendation and notation lines are on top, and a screenshot
is kept as an artifact (test-artifacts/report.png, or $SHOAL_TEST_ARTIFACTS)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from shoal.study.report import write_report
from tests.unit.test_study_report import make_db

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# what works on these machines (no network: the background services would only time out)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=15000"]
CHECK = """<script>
window.addEventListener("load", function () {
  var r = Array.prototype.map.call(document.images, function (i) {
    return {src: i.getAttribute("src"), complete: i.complete, w: i.naturalWidth, h: i.naturalHeight};
  });
  var pre = document.createElement("pre"); pre.id = "shoal-check";
  pre.textContent = JSON.stringify({images: r, first: document.body.innerText.slice(0, 600)});
  document.body.appendChild(pre);
});
</script>"""

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup)")


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="shoal-chromium-") as profile:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


def test_report_html_in_chromium(tmp_path: Path) -> None:
    out = tmp_path / "study"
    make_db(out)
    rep = write_report(out)
    assert rep.plots, "the synthetic study has plots"
    page = rep.html.read_text()
    probe = rep.html.with_name("report-check.html")
    probe.write_text(page.replace("</body>", CHECK + "</body>"))
    res = _chromium("--dump-dom", probe.as_uri())
    m = re.search(r'<pre id="shoal-check">(.*?)</pre>', res.stdout, re.S)
    assert m, res.stderr[-2000:]
    found = json.loads(html.unescape(m.group(1)))
    imgs = found["images"]
    assert len(imgs) == len(rep.plots)
    bad = [i for i in imgs if not i["complete"] or i["w"] <= 0 or i["h"] <= 0]
    assert bad == [], f"plots that did not load: {bad}"
    top = found["first"]
    assert top.index("Recommendation:") < top.index("Notation:") < top.index("Generated")
    assert "N is the number of nodes" in top and "n is the number of completed repetitions" in top

    artifacts = Path(os.environ.get("SHOAL_TEST_ARTIFACTS", REPO / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    res = _chromium(f"--screenshot={shot}", "--window-size=1280,2400", rep.html.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, res.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
