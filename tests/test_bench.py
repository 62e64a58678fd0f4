"""The CPU benchmarks still run (smoke, not timing): what the README quotes can be reproduced from the repo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mla_tune import api

from .fakes import FakeRunner

ROOT = Path(__file__).resolve().parents[1]


def bench(*args: str, timeout: int = 300) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_sweep_summary_reprints_the_committed_long_context_table():
    sweeps = ["results/sweeps/h100/deepseek-v3-tp1-long.jsonl", "results/sweeps/h100/deepseek-v3-tp8-long.jsonl"]
    out = bench("bench/sweep_summary.py", *sweeps)
    assert out == (ROOT / "results/h100/long_context_sweeps.txt").read_text()
    assert "  1 256q1s16k  TRITON_MLA            FAILS" in out


def test_search_efficiency_runs_on_a_small_recording(tmp_path):
    api.run_sweep(backend="TRITON_MLA", workload="spec:64q1s4k_q1s4k", output=tmp_path / "s.jsonl",
                  runner=FakeRunner(optimum={"num_kv_splits": 4}))
    api.run_sweep(backend="TRITON_MLA", workload="spec:8q1s4k", output=tmp_path / "t.jsonl",
                  runner=FakeRunner(optimum={"num_kv_splits": 2}))
    out = bench("bench/search_efficiency.py", str(tmp_path), "--seeds", "2", "--samplers", "auto,grid")
    assert "landscapes:" in out and "  auto " in out and "  grid " in out


def test_studies_report_reprints_the_committed_h200_report():
    out = bench("bench/studies_report.py", "results/h200/studies.journal")
    assert out == (ROOT / "results/h200/studies_report.txt").read_text()
    assert "H200  deepseek-v3-tp1   TRITON_MLA            35      256     32     9" in out


def test_plot_speed_times_plot_and_report_of_a_table():
    pytest.importorskip("matplotlib")
    out = bench("bench/plot_speed.py", "--runs", "1", "--target", "600", "--tables",
                "results/h200/run1/tables/TRITON_MLA-deepseek-v3-tp1.yaml")
    assert "mla-tune plot " in out and "mla-tune report " in out and "wrote 2 pictures" in out
    assert "FAILED" not in out
