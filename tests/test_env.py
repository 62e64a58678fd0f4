"""Environment variables: parsed in one place with types and bounds; a bad value is one line naming it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mla_tune import env
from mla_tune.cli import app
from mla_tune.coordination import gpu_lock
from mla_tune.data import search_spaces_dir
from mla_tune.errors import UsageError
from mla_tune.runners.replay import ReplayRunner

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for name in [*env.VARIABLES, env.CUDA_VISIBLE_DEVICES]:
        monkeypatch.delenv(name, raising=False)


def test_unset_or_empty_means_the_default(monkeypatch):
    assert env.heartbeat_s() == 10.0 and env.replay_delay_s() == 0.0
    assert env.lock_dir() == Path(tempfile.gettempdir()) and env.search_spaces_dir() is None
    assert env.storage() is None and env.profile_path() is None and env.cuda_visible_devices() is None
    monkeypatch.setenv(env.HEARTBEAT_S, "  ")
    assert env.heartbeat_s() == 10.0


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "0", "-1", "0.01", "3601", "1e9", "ten", "10s"])
def test_heartbeat_out_of_bounds_is_refused_not_replaced(monkeypatch, value):
    monkeypatch.setenv(env.HEARTBEAT_S, value)
    with pytest.raises(env.EnvError) as e:
        env.heartbeat_s()
    assert str(e.value).startswith(f"MLA_TUNE_HEARTBEAT_S={value!r}: expected a finite number of seconds from "
                                   "0.1 to 3600") and e.value.exit_code == 2


@pytest.mark.parametrize("name, value, expected", [
    (env.HEARTBEAT_S, "0.5", 0.5), (env.HEARTBEAT_S, " 30 ", 30.0), (env.REPLAY_DELAY_S, "0.08", 0.08),
    (env.REPLAY_DELAY_S, "0", 0.0),
])
def test_numbers_in_bounds(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    assert (env.heartbeat_s if name == env.HEARTBEAT_S else env.replay_delay_s)() == expected


@pytest.mark.parametrize("value", ["nan", "inf", "-0.1", "61", "x"])
def test_replay_delay_out_of_bounds(monkeypatch, value):
    monkeypatch.setenv(env.REPLAY_DELAY_S, value)
    with pytest.raises(env.EnvError, match="MLA_TUNE_REPLAY_DELAY_S=.*from 0 to 60"):
        ReplayRunner({}, None, "x")  # type: ignore[arg-type]


def test_directories(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(env.LOCK_DIR, str(tmp_path / "locks"))
    assert env.lock_dir() == tmp_path / "locks"  # made by the first lock
    monkeypatch.setenv(env.LOCK_DIR, str(tmp_path / "file"))
    with pytest.raises(env.EnvError, match="MLA_TUNE_LOCK_DIR=.*: not a directory"):
        env.lock_dir()
    monkeypatch.setenv(env.SEARCH_SPACES, str(tmp_path / "none"))
    with pytest.raises(env.EnvError, match="MLA_TUNE_SEARCH_SPACES=.*: no such directory"):
        search_spaces_dir()
    monkeypatch.setenv(env.SEARCH_SPACES, str(tmp_path))
    assert search_spaces_dir() == tmp_path


def test_text_values(monkeypatch):
    monkeypatch.setenv(env.STORAGE, " sqlite:///x.db ")
    monkeypatch.setenv(env.PROFILE, "/srv/profile.yaml")
    monkeypatch.setenv(env.CUDA_VISIBLE_DEVICES, "2, 3,")
    assert env.storage() == "sqlite:///x.db" and env.profile_path() == Path("/srv/profile.yaml")
    assert env.cuda_visible_devices() == ("2", "3") and gpu_lock.device_of("1") == "3"
    monkeypatch.setenv(env.STORAGE, "x" * 5000)
    with pytest.raises(env.EnvError, match="at most 4096 characters"):
        env.storage()
    monkeypatch.setenv(env.STORAGE, "a.journal\nb")
    with pytest.raises(env.EnvError, match="one line"):
        env.storage()


def test_an_unusable_lock_file_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(env.LOCK_DIR, str(tmp_path))
    (tmp_path / "mla-tune-gpu-GPU-test-uuid.lock").mkdir()
    with pytest.raises(UsageError, match="cannot create the GPU lock file .*Is a directory.*set MLA_TUNE_LOCK_DIR"):
        gpu_lock.acquire("GPU-test-uuid")


def test_the_cli_names_a_bad_variable_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(env.SEARCH_SPACES, str(tmp_path / "none"))
    r = CliRunner().invoke(app, ["spaces"])
    assert r.exit_code == 2 and r.output.strip().startswith("mla-tune: error: MLA_TUNE_SEARCH_SPACES=")
    monkeypatch.delenv(env.SEARCH_SPACES)
    monkeypatch.setenv(env.REPLAY_DELAY_S, "inf")
    r = CliRunner().invoke(app, ["backends", "--runner", f"replay:{ROOT / 'results' / 'sweeps' / 'h100'}"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "MLA_TUNE_REPLAY_DELAY_S='inf'" in lines[0], r.output
