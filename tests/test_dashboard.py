"""optuna-dashboard reads mla-tune's studies: served for real on loopback, asked over HTTP like its page does, and
the page itself rendered by a real headless Chromium ($MLA_TUNE_TEST_BROWSER, set by .ci/run; else found on PATH)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from mla_tune import api
from mla_tune.storage.urls import open_storage, parse_storage

from .fakes import FakeRunner

optuna_dashboard = pytest.importorskip("optuna_dashboard")


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


def get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture
def dashboard(tmp_path: Path):
    """A real optuna-dashboard on loopback over a journal with one finished, confirmed mla-tune study."""
    journal = tmp_path / "studies.journal"
    api.run_study(backend="TRITON_MLA", workload="spec:64q1s4k", tp=8, runner=FakeRunner(optimum={"num_kv_splits": 4}),
                  storage=str(journal), confirm_rounds=3)
    app = optuna_dashboard.wsgi(open_storage(parse_storage(str(journal)), create=False))
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


STUDY = "Fake100/deepseek-v3-tp8/TRITON_MLA/64q1s4k"


def test_dashboard_lists_studies_with_metric_and_attrs(dashboard):
    studies = get(dashboard, "/api/studies")["study_summaries"]
    [s] = [s for s in studies if s["study_name"] == STUDY]
    detail = get(dashboard, f"/api/studies/{s['study_id']}")
    assert detail["objective_names"] == ["latency_vs_default"]
    trial = detail["trials"][1]
    attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
    assert {"median_ms", "spread", "n_samples", "provenance", "config"} <= set(attrs)
    study_attrs = {a["key"] for a in detail["user_attrs"]}
    assert {"mla_tune", "confirmation"} <= study_attrs


def _browser() -> str:
    path = os.environ.get("MLA_TUNE_TEST_BROWSER") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium here (.ci/run installs it and sets MLA_TUNE_TEST_BROWSER)")
    return path


def rendered(browser: str, url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran (headless Chromium, nothing reached beyond loopback)."""
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_dashboard_page_shows_the_study_its_metric_and_params_in_a_real_browser(dashboard, tmp_path):
    browser = _browser()
    home = rendered(browser, f"{dashboard}/dashboard", tmp_path / "profile1")
    assert STUDY in home  # the study list, rendered by the page's own JavaScript from the API
    [s] = [s for s in get(dashboard, "/api/studies")["study_summaries"] if s["study_name"] == STUDY]
    page = rendered(browser, f"{dashboard}/dashboard/studies/{s['study_id']}", tmp_path / "profile2")
    assert "latency_vs_default" in page and "num_kv_splits" in page  # the objective's name and the knob


def test_the_dashboard_serves_each_studys_plots_from_its_artifact_dir(tmp_path):
    """`optuna-dashboard JOURNAL --artifact-dir JOURNAL.artifacts`, as the README says: the study lists its
    pictures and the dashboard hands out the PNGs."""
    pytest.importorskip("matplotlib")
    from optuna.artifacts import FileSystemArtifactStore

    from mla_tune.views.artifacts import attach_plots

    journal = tmp_path / "studies.journal"
    api.run_study(backend="TRITON_MLA", workload="spec:8q1s4k,64q1s4k", tp=8,
                  runner=FakeRunner(optimum={"num_kv_splits": 4}), storage=str(journal), confirm_rounds=3)
    done = attach_plots(str(journal))
    assert done.directory == tmp_path / "studies.journal.artifacts" and len(done.studies) == 2
    app = optuna_dashboard.wsgi(open_storage(parse_storage(str(journal)), create=False),
                                artifact_store=FileSystemArtifactStore(str(done.directory)))
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        [s] = [s for s in get(base, "/api/studies")["study_summaries"] if s["study_name"] == STUDY]
        shown = get(base, f"/api/studies/{s['study_id']}")["artifacts"]
        assert sorted(a["filename"] for a in shown) == ["Fake100-TRITON_MLA-deepseek-v3-tp8-heatmap-num_kv_splits.png",
                                                        "Fake100-TRITON_MLA-deepseek-v3-tp8-landscape.png"]
        for a in shown:
            with urllib.request.urlopen(f"{base}/artifacts/{s['study_id']}/{a['artifact_id']}", timeout=30) as r:
                assert r.headers["Content-Type"] == "image/png" and r.read().startswith(b"\x89PNG")
    finally:
        server.shutdown()
        server.server_close()
