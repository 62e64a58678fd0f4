"""The README as a newcomer reads it: the demo, then `show`, then the dashboard, run as written; the no-GPU line
it quotes is the real one; every environment variable mla-tune reads is in its table. It stays a user's
document (under 400 lines, the evidence in results/<gpu>/README.md), and its links lead somewhere."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import threading
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from typer.testing import CliRunner

from mla_tune import env
from mla_tune.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
cli = CliRunner()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def bash_blocks(text: str) -> list[list[str]]:
    return [[ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
            for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch):
    """A working directory that looks like the clone: the recorded sweeps where the README says they are."""
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "sweeps").symlink_to(ROOT / "results" / "sweeps")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLA_TUNE_STORAGE", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def test_the_demo_then_show_then_the_dashboard_work_as_written(fresh_clone):
    first, then, *_ = bash_blocks(section("Set-up: two commands"))
    install, *commands = first[0].split(" && ")
    assert install.startswith("python -m pip install -e '.[test]'")
    show, dashboard = then
    for line in [*commands, show]:
        args = shlex.split(line)
        assert args[0] == "mla-tune"
        r = cli.invoke(app, args[1:])
        assert r.exit_code == 0, f"{line}\n{r.output}"
        assert "replay" in r.output  # replayed numbers say so
    assert "H100-replay/deepseek-v3-tp1/FLASH_ATTN_MLA/256q1s4k" in r.output  # `show` found the demo's studies

    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    from optuna.artifacts import FileSystemArtifactStore

    args = shlex.split(dashboard, comments=True)
    assert args[0] == "optuna-dashboard" and args[2] == "--artifact-dir"
    storage, artifact_dir = args[1], args[3]
    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage, FileSystemArtifactStore(artifact_dir)),
                         handler_class=_Quiet)  # the dashboard opens the storage string as its CLI does
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with urllib.request.urlopen(base + "/api/studies", timeout=30) as resp:
            studies = json.loads(resp.read())["study_summaries"]
        assert len(studies) == 6  # decode_4k: 1 to 256 requests
        with urllib.request.urlopen(f"{base}/api/studies/{studies[0]['study_id']}", timeout=30) as resp:
            attached = json.loads(resp.read())["artifacts"]
        if importlib.util.find_spec("matplotlib") is not None:  # the test extra installs it
            assert any(a["filename"].endswith("-landscape.png") for a in attached)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="the README quotes a machine without torch")
def test_the_no_gpu_line_it_quotes_is_the_real_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = section("Set-up: two commands")
    gpu_command = bash_blocks(text)[2][0]
    quoted = re.search(r"\n`(mla-tune: error: .*)`\n", text).group(1)
    r = cli.invoke(app, shlex.split(gpu_command)[1:])
    assert r.exit_code == 1 and r.output.strip() == quoted
    assert not list(tmp_path.iterdir())  # and nothing is written


def test_every_environment_variable_is_in_the_table():
    table = section("Environment variables")
    for name in [*env.VARIABLES, env.CUDA_VISIBLE_DEVICES]:
        assert f"| `{name}` |" in table, name
    read = set(re.findall(r"MLA_TUNE_[A-Z_]+", "".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))))
    assert read - {"MLA_TUNE_"} <= set(re.findall(r"`(MLA_TUNE_[A-Z_]+)`", table))


def test_the_commands_table_names_every_command():
    table = section("Commands")
    import typer.main

    for name in typer.main.get_command(app).commands:
        assert re.search(rf"`mla-tune {name}\b|, `{name} ", table), name


def test_the_readme_stays_a_users_document_under_400_lines():
    lines = len(README.splitlines())
    assert lines < 400, f"README.md has {lines} lines: move measurements to results/<gpu>/README.md"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks, then inline code
    return re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", text))


@pytest.mark.parametrize("doc", ["README.md", "results/h200/README.md", "results/h100/README.md"])
def test_every_relative_link_points_at_a_file_and_heading_that_exist(doc):
    path = ROOT / doc
    links = [link for link in _links(path) if not re.match(r"[a-z]+:", link)]
    for link in links:
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        assert file.exists(), f"{doc}: {link}"
        if anchor and file.suffix == ".md":
            prose = re.sub(r"```.*?```", "", file.read_text(), flags=re.S)
            assert anchor in {_slug(h) for h in re.findall(r"^#+ (.*)$", prose, re.M)}, f"{doc}: {link}"
    if doc == "README.md":  # the evidence is one click away
        assert {"results/h200/README.md", "results/h100/README.md"} <= set(links)
