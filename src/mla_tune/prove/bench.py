"""Run a bench-serve plan into a folder, keeping every completed run.

``OUT/plan.json`` says what is run (with the profile's hash) and ``OUT/environment.json`` where (GPU, vLLM);
``OUT/runs/<repeat>-<variant>-<load>.json`` is vLLM's own result of each completed client run, moved in whole once
the run is over and checked (every request completed, the plugin's log right for the variant); ``OUT/logs/`` the
servers' and the clients' output, one server log per start; ``OUT/summary.json`` the ratios so far, rewritten after
each server and at the end. A stop at any point (Ctrl-C, SIGTERM, SIGHUP) stops the server and keeps what completed;
the same command with the same ``-o`` runs only the server starts that are missing. A folder of another plan, profile
or environment is refused.

A server start is the unit that is kept or run again, never a part of it: the first runs on a fresh server pay
one-time costs that later runs on it do not. On an H100 (vLLM 0.20.0, 16 dense layers) a start resumed at its
concurrency-256 load, which then ran first on its server, gave 1753 output tok/s where the same load after the 8 and
64 loads gave 2210-2233. So the runs of a start cut short are set aside whole (``OUT/superseded/``, kept, never
summarized) and the start runs again from its first load.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UsageError
from ..tables.export import write_atomic
from .plan import BenchPlan, Load, Start, shell
from .processes import BenchError, check_runnable, gpu_name, plugin_refusal, run_client, server, version_of
from .summary import METRICS, RunResult, Summary, number, summarize, values_of

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Timeouts:
    server_s: float = 900.0  # loading a model and capturing its graphs
    client_s: float = 7200.0  # one client run


def run_name(start: Start, load: Load) -> str:
    return f"{start.label}-{load.label}.json"


def run_bench(plan: BenchPlan, out: Path, progress: Progress = lambda _: None, env: Mapping[str, str] | None = None,
              timeouts: Timeouts = Timeouts()) -> Summary:
    """Run what ``plan`` still misses in ``out``; the summary of every run there when done (or stopped: its
    ``complete`` says which). Raises ``BenchError`` for a server, client or plugin failure, after keeping what
    completed and writing the summary of it."""
    env = dict(os.environ if env is None else env)
    out = Path(out)
    check_runnable(plan.vllm)
    _claim(out, plan)
    (out / "runs").mkdir(exist_ok=True)
    environment = _same_environment(out, {"gpu": gpu_name(env), "vllm": version_of(plan.vllm, env),
                                          "mla_tune": __version__})
    progress(f"bench-serve: {environment['gpu']}, vLLM {environment['vllm']}; {len(plan.variants)} variants x "
             f"{plan.repeats} repeats, crossed over; loads {', '.join(x.label for x in plan.loads)}")
    starts = plan.starts()
    try:
        with _stops_as_interrupts():
            for start in starts:
                kept = [x for x in plan.loads if _kept(out / "runs" / run_name(start, x), progress)]
                head = f"[{start.index + 1}/{len(starts)}] {start.label}"
                if len(kept) == len(plan.loads):
                    progress(f"{head}: every load done earlier, kept")
                    continue
                if kept:
                    _set_aside(out, start, kept, progress, head)
                _serve(plan, start, list(plan.loads), out, env, timeouts, progress, head)
                _write_summary(out, summarize(plan, _completed(plan, out), environment))
    finally:  # however the loop ends: the summary of what is kept
        summary = summarize(plan, _completed(plan, out), environment)
        _write_summary(out, summary)
    return summary


@contextlib.contextmanager
def _stops_as_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP (``timeout``, a scheduler, a lost ssh session) stop the bench as Ctrl-C does: the server
    is stopped and what completed is kept. (Off the main thread Python installs no handlers: nothing changes.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _serve(plan: BenchPlan, start: Start, loads: list[Load], out: Path, env: dict[str, str], timeouts: Timeouts,
           progress: Progress, head: str) -> None:
    v = start.variant
    cmd, server_env = plan.server_command(v), plan.server_env(v, env)
    log = _fresh(out / "logs", f"{start.label}.server", ".log")  # a resumed start keeps the log of the runs before
    progress(f"{head}: starting {shell(cmd, dict(v.env))}")
    t0 = time.monotonic()
    last = [0.0]

    def waiting(s: float) -> None:
        if s - last[0] >= 30:
            last[0] = s
            progress(f"{head}: server loading ({s:.0f} s)")

    with server(cmd, server_env, log, plan.port, timeouts.server_s, waiting) as srv:
        progress(f"{head}: server up in {time.monotonic() - t0:.0f} s")

        def check() -> None:  # before the first run, and before each run is kept: a plugin that failed while
            why = plugin_refusal(srv.log_lines(), v)  # serving left vLLM's defaults running, not the profile
            if why:
                raise BenchError(f"{start.label}: {why}; its runs would not be the {v.name} variant's, so none is "
                                 f"reported (log: {log})")

        check()
        for load in loads:
            progress(f"{head}: {load.label}, {load.num_prompts} requests at concurrency {load.concurrency}")
            values = _client(plan, start, load, out, env, timeouts, check)
            progress(f"{head}: {load.label}: " + ", ".join(f"{m.label} {number(values[m.key])} {m.unit}"
                                                           for m in METRICS[:3] if m.key in values))


def _client(plan: BenchPlan, start: Start, load: Load, out: Path, env: dict[str, str], timeouts: Timeouts,
            check: Callable[[], None]) -> dict[str, float]:
    """One client run; its result JSON moved into ``runs/`` only once it is complete, every request finished and
    ``check`` passed."""
    name = run_name(start, load)
    tmp = Path(tempfile.mkdtemp(prefix=".run-", dir=out))
    try:
        cmd = plan.client_command(load, tmp, "result.json")
        run_client(cmd, plan.client_env(env), _fresh(out / "logs", name.removesuffix(".json") + ".client", ".log"),
                   timeouts.client_s)
        try:
            result = json.loads((tmp / "result.json").read_text())
        except (OSError, ValueError) as e:
            raise BenchError(f"{start.label} {load.label}: vllm bench serve wrote no readable result ({e})") from None
        done, failed = result.get("completed"), result.get("failed", 0)
        if done != load.num_prompts or failed:
            raise BenchError(f"{start.label} {load.label}: {done} of {load.num_prompts} requests completed, "
                             f"{failed} failed: the run does not measure the load asked for")
        values = values_of(result)
        lacking = [m.key for m in METRICS if m.key not in values]
        if lacking:
            raise BenchError(f"{start.label} {load.label}: vLLM's result has no {', '.join(lacking)}")
        check()
        os.replace(tmp / "result.json", out / "runs" / name)
        return values
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fresh(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem.suffix``, or ``stem-2.suffix``, ... where earlier attempts left theirs."""
    folder.mkdir(parents=True, exist_ok=True)
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path


def _values(path: Path) -> dict[str, float] | None:
    """A kept run's metrics, or None where its file is missing or not a whole result."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict):  # ``null``, a list, a number: JSON, but no result of vLLM's
        return None
    values = values_of(result)
    return values if all(m.key in values for m in METRICS) else None


def _kept(path: Path, progress: Progress) -> bool:
    """Is the run at ``path`` done? A file that is not a whole result is removed, and the run made again."""
    if _values(path) is not None:
        return True
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
        progress(f"{path.name}: a folder, not a result: removed, run again")
    elif path.exists() or path.is_symlink():
        path.unlink()
        progress(f"{path.name}: not a whole result, run again")
    return False


def _set_aside(out: Path, start: Start, loads: list[Load], progress: Progress, head: str) -> None:
    """Move the runs of a start that was cut short to ``OUT/superseded/``: its next server runs every load again,
    so that each of its runs has the history of the same run in every other start."""
    for load in loads:
        name = run_name(start, load)
        os.replace(out / "runs" / name, _fresh(out / "superseded", name.removesuffix(".json"), ".json"))
    progress(f"{head}: the start was cut short; its {len(loads)} earlier run(s) set aside in superseded/ and every "
             f"load run again on a fresh server")


def _completed(plan: BenchPlan, out: Path) -> list[RunResult]:
    """The runs of every whole start (a start cut short is run again whole: its runs so far are not comparable)."""
    runs = []
    for start in plan.starts():
        whole = []
        for load in plan.loads:
            path = out / "runs" / run_name(start, load)
            values = _values(path)
            if values is None:
                break
            whole.append(RunResult(start, load, values, str(path.relative_to(out))))
        else:
            runs += whole
    return runs


def _claim(out: Path, plan: BenchPlan) -> None:
    """Make ``out`` this plan's folder, or find it already is (its temporaries of a stop by SIGKILL cleared);
    another plan's folder, or the same plan with a changed profile, is refused."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a folder for bench-serve's results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "plan.json"
    mine = plan.to_dict()
    if path.exists():
        try:
            theirs = json.loads(path.read_text())
        except (OSError, ValueError):
            theirs = None
        if not isinstance(theirs, dict) or _measured(theirs) != _measured(mine):
            changed = isinstance(theirs, dict) and _measured(theirs) == _measured(mine, "profile_sha256")
            raise UsageError(f"{out} holds another bench-serve plan ("
                             f"{'the profile changed since' if changed else 'plan.json differs'})",
                             hint="give another -o, or the same arguments and profile to resume it")
        for stale in [*out.glob(".run-*"), *out.glob(".*.json.*"), *(out / "runs").glob(".*")]:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        return
    if any(out.iterdir()):
        raise UsageError(f"{out} is not empty and holds no bench-serve plan", hint="give an empty or new -o")
    _write_json(path, mine)


def _same_environment(out: Path, here: dict[str, str]) -> dict[str, str]:
    """The GPU and vLLM of the folder's runs: this host's, which must be those of any run kept from before."""
    path = out / "environment.json"
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        before = None
    if isinstance(before, dict) and any(before.get(k) != here[k] for k in ("gpu", "vllm")):
        raise UsageError(f"{out} holds runs on {before.get('gpu')} with vLLM {before.get('vllm')}; this host has "
                         f"{here['gpu']} with vLLM {here['vllm']}: one summary never mixes them",
                         hint="give another -o")
    _write_json(path, here)
    return here


def _measured(plan: dict[str, Any], *leave_out: str) -> dict[str, Any]:
    """What a plan measures: all of it but the port, which a resumed run may change."""
    return {k: v for k, v in plan.items() if k not in ("port", *leave_out)}


def _write_summary(out: Path, summary: Summary) -> None:
    _write_json(out / "summary.json", summary.to_dict())


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


__all__ = ["Timeouts", "run_bench", "run_name"]
