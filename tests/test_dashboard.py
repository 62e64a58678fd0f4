"""optuna-dashboard reads mla-tune's studies: served for real on loopback, asked over HTTP like its page does."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from mla_tune import api
from mla_tune.storage import open_storage, parse_storage

from .fakes import FakeRunner

optuna_dashboard = pytest.importorskip("optuna_dashboard")


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


def get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())


def test_dashboard_lists_studies_with_metric_and_attrs(tmp_path: Path):
    journal = tmp_path / "studies.journal"
    api.run_study(backend="TRITON_MLA", workload="spec:64q1s4k", tp=8, runner=FakeRunner(optimum={"num_kv_splits": 4}),
                  storage=str(journal), confirm_rounds=3)
    app = optuna_dashboard.wsgi(open_storage(parse_storage(str(journal)), create=False))
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        studies = get(base, "/api/studies")["study_summaries"]
        [s] = [s for s in studies if s["study_name"] == "Fake100/deepseek-v3-tp8/TRITON_MLA/64q1s4k"]
        detail = get(base, f"/api/studies/{s['study_id']}")
        assert detail["objective_names"] == ["latency_ms"]
        trial = detail["trials"][1]
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert {"median_ms", "spread", "n_samples", "provenance", "config"} <= set(attrs)
        study_attrs = {a["key"] for a in detail["user_attrs"]}
        assert {"mla_tune", "confirmation"} <= study_attrs
    finally:
        server.shutdown()
        server.server_close()
