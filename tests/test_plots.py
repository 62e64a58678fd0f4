"""plot: the numbers behind the pictures (pure), the PNGs themselves, the command, and the import hygiene."""

from __future__ import annotations

import ast
import json
import os
import stat
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.errors import UsageError
from mla_tune.tables.landscape_io import read_sweeps, read_table
from mla_tune.views.plotdata import heatmaps, shape_bars

ROOT = Path(__file__).resolve().parent.parent
TRITON_H200 = ROOT / "results/h200/run1/tables/TRITON_MLA-deepseek-v3-tp1.yaml"
FA_H200 = ROOT / "results/h200/run1/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml"
LONG_SWEEP = ROOT / "results/sweeps/h100/deepseek-v3-tp1-long.jsonl"
cli = CliRunner()


def sweep_subset(tmp_path: Path, shapes: set[str], drop=lambda r: False, runner: str = "vllm") -> Path:
    """The TRITON_MLA records of ``shapes`` from the committed long-context H100 sweep, as a sweep file."""
    lines = LONG_SWEEP.read_text().splitlines()
    header = json.loads(lines[0])
    header["environment"]["runner"] = runner
    keep = [ln for ln in lines[1:] if (r := json.loads(ln))["backend"] == "TRITON_MLA" and r["shape"] in shapes
            and not drop(r)]
    path = tmp_path / "sweep.jsonl"
    path.write_text("\n".join([json.dumps(header)] + keep) + "\n")
    return path


def _trial_ms(entry: dict, **params) -> float:
    return next(x["trial_ms"] for x in entry["landscape"] if all(x["params"][k] == v for k, v in params.items()))


def test_heatmap_of_a_one_context_table_has_the_knob_values_as_columns():
    [h] = heatmaps(read_table(TRITON_H200))
    assert h.knob == "num_kv_splits" and h.default == "auto" and h.chosen_column
    assert h.rows == ("1", "8", "32", "64", "128", "256")
    assert h.columns == ("1", "2", "4", "8", "16", "32", "64", "auto (default)", "deployed")
    [panel] = h.panels
    entry = next(e for e in yaml.safe_load(TRITON_H200.read_text())["entries"] if e["shape"] == "8q1s4k")
    base = _trial_ms(entry, num_kv_splits="auto")
    assert panel.cells[1][2] == pytest.approx(base / _trial_ms(entry, num_kv_splits=4))
    assert panel.cells[1][7] == 1.0
    assert panel.cells[1][8] == 1.074 and panel.notes[1][8] == "4"  # the confirmed speedup, not the trial's
    assert panel.notes[0][8] == "default"  # q1s4k kept vLLM's default


def test_heatmaps_of_sweeps_span_contexts_and_leave_unmeasured_cells_empty(tmp_path):
    path = sweep_subset(tmp_path, {"q1s1k", "8q1s1k", "q1s16k", "8q1s16k"},
                        drop=lambda r: r["shape"] == "8q1s16k" and r["config"]["num_kv_splits"] == 8)
    [ls] = read_sweeps([path])
    assert ls.kind == "sweep" and ls.backend == "TRITON_MLA" and ls.tp == 1
    [h] = heatmaps(ls)
    assert h.columns == ("1k", "16k") and h.rows == ("1", "8") and not h.chosen_column
    titles = [p.title for p in h.panels]
    assert titles[0] == "num_kv_splits = 1" and "num_kv_splits = auto" not in titles
    eight = h.panels[titles.index("num_kv_splits = 8")]
    assert eight.cells[1][1] is None and eight.cells[0][0] is not None
    records = [json.loads(x) for x in path.read_text().splitlines()[1:]]
    med = {(r["shape"], r["config"]["num_kv_splits"]): statistics.median(r["samples_ms"]) for r in records}
    assert eight.cells[0][0] == pytest.approx(med[("q1s1k", "auto")] / med[("q1s1k", 8)])
    fastest = h.panels[-1]
    assert fastest.title.startswith("fastest") and all(n for row in fastest.notes for n in row)


def test_shape_bars_mark_the_deployed_setting_and_its_confirmed_interval():
    bars = {b.label: b for b in shape_bars(read_table(FA_H200))}
    big = bars["256q1s4k"]
    roles = {b.role: b for b in big.bars}
    assert roles["deployed"].label == "max_num_splits=1" and roles["default"].label == "vLLM default"
    assert roles["default"].speedup == 1.0
    assert big.confirmed[0] == "deployed" and big.confirmed[1].text() == "x1.105 [1.081, 1.129]"
    assert big.hidden == 18 - len(big.bars)
    small = bars["q1s4k"]
    assert small.confirmed[0] == "candidate" and any(b.role == "candidate" for b in small.bars)
    assert [b.speedup for b in small.bars] == sorted((b.speedup for b in small.bars), reverse=True)


def test_a_shape_whose_default_failed_is_listed_with_its_failures(tmp_path):
    [ls] = read_sweeps([sweep_subset(tmp_path, {"q1s1k", "128q1s64k"})])
    bars = {b.label: b for b in shape_bars(ls)}
    assert bars["128q1s64k"].bars == () and bars["128q1s64k"].failures == ("error",)
    assert bars["128q1s64k"].failed == 1
    [h] = heatmaps(ls)  # rows 1 and 128, columns 1k and 64k
    assert h.panels[0].cells[1][1] is None and h.panels[0].notes[1][1] == "default failed"
    assert h.panels[0].cells[1][0] is None and h.panels[0].notes[1][0] == ""  # not measured at all
    assert h.panels[-1].notes[1][1] == "default failed"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_pictures_are_pngs_titled_with_their_source(tmp_path):
    pytest.importorskip("matplotlib")
    from mla_tune.views import plots

    pics = plots.pictures(read_table(TRITON_H200))
    assert [p.name for p in pics] == ["H200-TRITON_MLA-deepseek-v3-tp1-heatmap-num_kv_splits.png",
                                      "H200-TRITON_MLA-deepseek-v3-tp1-landscape.png"]
    for p in pics:
        w, h = _png_size(p.png)
        assert 600 < w < 2000 and 300 < h < 2000 and len(p.png) < 200_000
    assert plots.pictures(read_table(TRITON_H200))[0].png == pics[0].png  # same table, same bytes
    title = plots._suptitle(read_table(TRITON_H200), "x")
    assert "NVIDIA H200" in title and "vLLM 0.20.0" in title and "runner vllm" in title
    [replayed] = read_sweeps([sweep_subset(tmp_path, {"q1s1k"}, runner="replay")])
    assert "runner replay" in plots._suptitle(replayed, "x") and "REPLAYED" in plots._suptitle(replayed, "x")
    assert replayed.stem == "H100-replay-TRITON_MLA-deepseek-v3-tp1-sweep"


def test_pictures_are_256_colours_with_white_exact_and_few_colours_lossless():
    pytest.importorskip("matplotlib")
    import numpy as np

    from mla_tune.views import plots

    rgba = np.full((40, 30, 4), 255, dtype=np.uint8)
    rgba[5:10, :, :3] = (67, 147, 195)
    rgba[20:22, 3:9, :3] = 0
    few = plots._indexed(rgba.tobytes(), (30, 40))
    assert few.mode == "P" and np.array_equal(np.asarray(few.convert("RGBA")), rgba)
    rgba[25:35, :, :3] = np.arange(300 * 3, dtype=np.uint8).reshape(10, 30, 3)  # more colours than a palette holds
    many = np.asarray(plots._indexed(rgba.tobytes(), (30, 40)).convert("RGB"))
    white = (rgba[..., :3] == 255).all(axis=2)
    assert (many[white] == 255).all()
    assert np.abs(many.astype(int) - rgba[..., :3]).max() < 40
    blank = plots._indexed(np.full((2, 2, 4), 255, dtype=np.uint8).tobytes(), (2, 2))
    assert blank.convert("RGB").getcolors() == [(4, (255, 255, 255))]


def test_cli_plot_writes_the_pngs_into_a_new_folder(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "a" / "plots"
    r = cli.invoke(app, ["plot", str(TRITON_H200), "-o", str(out)])
    assert r.exit_code == 0, r.output
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["H200-TRITON_MLA-deepseek-v3-tp1-heatmap-num_kv_splits.png",
                                       "H200-TRITON_MLA-deepseek-v3-tp1-landscape.png"]
    assert r.output.count("wrote ") == 2
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o666 & ~umask}  # not mkstemp's 0600


def test_cli_plot_refuses_a_file_as_the_folder_and_bad_inputs_in_one_line(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    for args in (["plot", str(TRITON_H200), "-o", str(not_a_dir)], ["plot", str(bad), "-o", str(tmp_path / "o")],
                 ["plot", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "o")]):
        r = cli.invoke(app, args)
        assert r.exit_code == 2, r.output
        [line] = [x for x in r.output.splitlines() if x.strip()]
        assert line.startswith("mla-tune: error:")
    assert not (tmp_path / "o").exists()


def test_without_matplotlib_drawing_is_one_usage_error(monkeypatch):
    from mla_tune.views import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match=r"mla-tune\[plot\]"):
        plots._pyplot()


def test_matplotlib_is_imported_only_inside_plots_and_never_at_import_time():
    code = ("import sys, mla_tune.cli, mla_tune.views.plots, mla_tune.views.report, mla_tune.tables.diff; "
            "print([m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'PIL')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    importers = []
    for path in sorted((ROOT / "src/mla_tune").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n.split(".")[0] in ("matplotlib", "PIL") for n in names):
                importers.append(path.name)
    assert set(importers) == {"plots.py"}
