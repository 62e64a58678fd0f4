"""report: one self-contained HTML file from the committed tables, escaped, and rendered by a real headless Chromium
($MLA_TUNE_TEST_BROWSER, set by .ci/run) with every picture decoded."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.tables.landscape_io import read_table

pytest.importorskip("matplotlib")
from mla_tune.views.report import render_report  # after the skip: drawing needs matplotlib

ROOT = Path(__file__).resolve().parent.parent
TABLES = [ROOT / "results/h200/run1/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml",
          ROOT / "results/h200/run1/tables/TRITON_MLA-deepseek-v3-tp1.yaml"]
cli = CliRunner()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    r = cli.invoke(app, ["report", *map(str, TABLES), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"wrote {out}"
    return out


def test_the_report_has_provenance_what_to_deploy_and_what_was_not_tuned(report):
    text = report.read_text()
    for words in ("NVIDIA H200 (SM 9.0)", "2.11.0+cu130", "0.20.0", "2026-11-30T10:42:03Z", "What to deploy",
                  "Not tuned, and why", "x1.105 [1.081, 1.129]", "max_num_splits=1", "num_kv_splits=4",
                  "is not distinguishable from noise", "0.5549 → 0.5043"):
        assert words in text, words
    for shape in ("q1s4k", "8q1s4k", "32q1s4k", "64q1s4k", "128q1s4k", "256q1s4k"):
        assert f"<td>{shape}</td>" in text
    assert "replay" not in text.split("</style>")[1]


def test_the_report_is_self_contained(report):
    text = report.read_text()
    srcs = re.findall(r"""\b(?:src|href)=['"]([^'"]*)""", text)
    images = [s for s in srcs if s.startswith("data:image/png;base64,")]
    assert len(images) == 6  # per table: its heatmaps and its per-shape chart
    assert all(s.startswith(("data:image/png;base64,", "#")) for s in srcs)
    for pic in images:
        assert base64.b64decode(pic.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    lowered = text.lower()
    assert "<script" not in lowered and "<link" not in lowered and "url(" not in lowered and "@import" not in lowered


def test_the_same_tables_give_the_same_bytes():
    landscapes = [read_table(TABLES[1])]
    assert render_report(landscapes) == render_report(landscapes)


def _hostile_table(tmp_path: Path, runner: str = "vllm") -> Path:
    data = yaml.safe_load(TABLES[1].read_text())
    data["entries"][0]["note"] = "<script>alert('x')</script> & \"quoted\" <img src=http://example.com/x>"
    data["provenance"]["runner"] = runner
    path = tmp_path / "hostile <table>.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_text_from_tables_is_escaped_and_replays_are_marked(tmp_path):
    text = render_report([read_table(_hostile_table(tmp_path, runner="replay"))])
    assert "<script" not in text and "<img src=http" not in text
    assert html.escape("<script>alert('x')</script> & \"quoted\"") in text
    assert "hostile &lt;table&gt;.yaml" in text
    assert "<span class=tag>replay</span>" in text and "Replayed:" in text and "ms (replay)" in text


def test_bad_input_and_a_directory_as_output_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: x\n")
    for args in (["report", str(bad), "-o", str(tmp_path / "r.html")], ["report", str(TABLES[1]), "-o", str(tmp_path)]):
        r = cli.invoke(app, args)
        assert r.exit_code == 2, r.output
        assert len([x for x in r.output.splitlines() if x.strip()]) == 1
    assert not (tmp_path / "r.html").exists()


_PROBE = """<script>
window.addEventListener('load', () => {
  const p = document.createElement('pre');
  p.id = 'probe';
  p.textContent = JSON.stringify([...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]));
  document.body.appendChild(p);
});
</script>"""


def test_a_real_browser_shows_the_shapes_and_decodes_every_picture(report, tmp_path):
    browser = os.environ.get("MLA_TUNE_TEST_BROWSER")
    if not browser:
        pytest.skip("set MLA_TUNE_TEST_BROWSER to a Chromium (.ci/run does)")
    page = tmp_path / "probed.html"  # the report plus a probe script; the report itself has none
    page.write_text(report.read_text().replace("</body>", _PROBE + "</body>"))
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    probe = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.DOTALL)
    assert probe, dom[-2000:]
    images = json.loads(html.unescape(probe.group(1)))
    assert len(images) == 6 and all(done and w > 500 and h > 200 for done, w, h in images), images
    for shape in ("q1s4k", "64q1s4k", "256q1s4k"):
        assert f"<td>{shape}</td>" in dom
    assert "What to deploy" in dom and "NVIDIA H200" in dom
