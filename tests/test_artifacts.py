"""Each confirmed study's plots attached as Optuna artifacts after `study`, redrawn only when a confirmation
changes, replaced in place; nothing (and no error) without matplotlib or a folder for them."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta
from typer.testing import CliRunner

from mla_tune.cli import app
from mla_tune.runners import register_runner
from mla_tune.storage.urls import open_storage, parse_storage
from mla_tune.views import artifacts
from mla_tune.views.artifacts import PLOTS_MARK, attach_plots

from .fakes import FakeRunner

pytest.importorskip("matplotlib")
cli = CliRunner()
STUDY = ["study", "--backend", "TRITON_MLA", "--workload", "spec:8q1s4k,64q1s4k", "--runner", "fake",
         "--confirm-rounds", "3"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLA_TUNE_STORAGE", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    register_runner("fake", lambda arg: FakeRunner(optimum={"num_kv_splits": 16}))
    return tmp_path


def metas(journal: Path) -> dict[str, list[str]]:
    store = open_storage(parse_storage(str(journal)), create=False)
    return {s.study_name: sorted(m.filename for m in get_all_artifact_meta(optuna.load_study(
        study_name=s.study_name, storage=store))) for s in store.get_all_studies()}


def test_study_attaches_each_confirmed_studys_plots_once(in_tmp):
    r = cli.invoke(app, STUDY)
    assert r.exit_code == 0, r.output
    line = ("attached plots to 2 studies; see them with: optuna-dashboard results/studies.journal --artifact-dir "
            "results/studies.journal.artifacts")
    assert line in r.output
    found = metas(in_tmp / "results/studies.journal")
    assert set(found) == {"Fake100/deepseek-v3-tp1/TRITON_MLA/8q1s4k", "Fake100/deepseek-v3-tp1/TRITON_MLA/64q1s4k"}
    for files in found.values():  # the page of per-shape bars that holds the shape, then the group's heatmaps
        assert files[0] == "Fake100-TRITON_MLA-deepseek-v3-tp1-heatmap-num_kv_splits.png"
        assert files[-1] == "Fake100-TRITON_MLA-deepseek-v3-tp1-landscape.png"
    stored = sorted(p.name for p in (in_tmp / "results/studies.journal.artifacts").iterdir())
    assert len(stored) == 2 * len(files) + 1 and all(p.read_bytes().startswith(b"\x89PNG") for p in
                                                    (in_tmp / "results/studies.journal.artifacts").iterdir()
                                                    if not p.name.startswith("."))
    again = cli.invoke(app, STUDY)  # nothing new: nothing drawn, nothing said
    assert again.exit_code == 0 and "attached plots" not in again.output
    assert metas(in_tmp / "results/studies.journal") == found


def test_a_new_confirmation_redraws_in_place(in_tmp):
    journal = in_tmp / "s.journal"
    assert cli.invoke(app, [*STUDY, "--trials", "4", "--storage", str(journal)]).exit_code == 0
    before = metas(journal)
    ids = sorted(p.name for p in (in_tmp / "s.journal.artifacts").iterdir())
    r = cli.invoke(app, [*STUDY, "--trials", "6", "--storage", str(journal)])  # more configs: confirmed again
    assert r.exit_code == 0 and "attached plots to 2 studies" in r.output
    assert metas(journal) == before and sorted(p.name for p in (in_tmp / "s.journal.artifacts").iterdir()) == ids
    store = open_storage(parse_storage(str(journal)), create=False)
    assert all(s.system_attrs.get(PLOTS_MARK) for s in store.get_all_studies())


def test_nothing_is_attached_without_matplotlib_or_a_folder(in_tmp, monkeypatch):
    monkeypatch.setattr(artifacts, "can_draw", lambda: False)
    r = cli.invoke(app, STUDY)
    assert r.exit_code == 0 and "attached plots" not in r.output and "warning" not in r.output
    assert not (in_tmp / "results/studies.journal.artifacts").exists()
    assert attach_plots("results/studies.journal").skipped == "drawing needs matplotlib: pip install 'mla-tune[plot]'"
    server = attach_plots("postgresql://u@127.0.0.1:1/db")
    assert server.directory is None and "no folder" in server.skipped


def test_sqlite_keeps_them_beside_the_database(in_tmp):
    r = cli.invoke(app, [*STUDY, "--storage", "sqlite:///s.db"])
    assert r.exit_code == 0 and "--artifact-dir s.db.artifacts" in r.output
    assert any((in_tmp / "s.db.artifacts").iterdir())


def test_a_failure_to_attach_is_a_warning_not_a_failed_study(in_tmp, monkeypatch):
    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts, "attach_file", full)
    r = cli.invoke(app, STUDY)
    assert r.exit_code == 0
    assert "mla-tune: warning: no plots attached to the studies: [Errno 28] No space left on device" in r.output


def test_only_the_studies_the_command_ran_get_plots(in_tmp):
    from mla_tune import api

    journal = str(in_tmp / "results/studies.journal")
    api.run_study(backend="FLASHMLA", workload="spec:64q1s4k", runner=FakeRunner(), storage=journal,
                  confirm_rounds=3)  # already there, made without the CLI
    r = cli.invoke(app, STUDY)
    assert r.exit_code == 0 and "attached plots to 2 studies" in r.output
    found = metas(in_tmp / "results/studies.journal")
    assert found["Fake100/deepseek-v3-tp1/FLASHMLA/64q1s4k"] == [] and all(
        files for name, files in found.items() if "TRITON_MLA" in name)
