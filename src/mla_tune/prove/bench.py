"""Run a bench-serve plan into a folder, keeping every completed run.

``OUT/plan.json`` says what is run; ``OUT/runs/<repeat>-<variant>-<load>.json`` is vLLM's own result of each
completed client run (moved in whole once the run is over and checked: every request completed); ``OUT/logs/`` the
server's and the client's output; ``OUT/summary.json`` the ratios so far, rewritten after each server. A stop at any
point keeps what completed, and the same command with the same ``-o`` runs only what is missing. A folder holding
another plan is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UsageError
from ..tables.export import write_atomic
from .plan import BenchPlan, Load, Start, shell
from .processes import BenchError, gpu_name, plugin_refusal, run_client, server, version_of
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
    _claim(out, plan)
    runs_dir, logs = out / "runs", out / "logs"
    runs_dir.mkdir(exist_ok=True)
    environment = {"gpu": gpu_name(env), "vllm": version_of(plan.vllm, env), "mla_tune": __version__}
    progress(f"bench-serve: {environment['gpu']}, vLLM {environment['vllm']}; {len(plan.variants)} variants x "
             f"{plan.repeats} repeats, crossed over; loads {', '.join(x.label for x in plan.loads)}")
    starts = plan.starts()
    try:
        for start in starts:
            missing = [x for x in plan.loads if not (runs_dir / run_name(start, x)).exists()]
            head = f"[{start.index + 1}/{len(starts)}] {start.label}"
            if not missing:
                progress(f"{head}: every load done earlier, kept")
                continue
            _serve(plan, start, missing, out, env, timeouts, progress, head)
            _write_summary(out, summarize(plan, _completed(plan, out), environment))
    except BaseException:
        _write_summary(out, summarize(plan, _completed(plan, out), environment))
        raise
    return summarize(plan, _completed(plan, out), environment)


def _serve(plan: BenchPlan, start: Start, loads: list[Load], out: Path, env: dict[str, str], timeouts: Timeouts,
           progress: Progress, head: str) -> None:
    v = start.variant
    cmd, server_env = plan.server_command(v), plan.server_env(v, env)
    log = out / "logs" / f"{start.label}.server.log"
    progress(f"{head}: starting {shell(cmd, dict(v.env))}")
    t0 = time.monotonic()
    last = [0.0]

    def waiting(s: float) -> None:
        if s - last[0] >= 30:
            last[0] = s
            progress(f"{head}: server loading ({s:.0f} s)")

    with server(cmd, server_env, log, plan.port, timeouts.server_s, waiting) as srv:
        progress(f"{head}: server up in {time.monotonic() - t0:.0f} s")
        _check_plugin(srv.log_lines(), start, log)
        for load in loads:
            progress(f"{head}: {load.label}, {load.num_prompts} requests at concurrency {load.concurrency}")
            values = _client(plan, start, load, out, env, timeouts)
            # a plugin that failed while serving left vLLM's defaults running: those numbers are not the profile's
            _check_plugin(srv.log_lines(), start, log)
            progress(f"{head}: {load.label}: " + ", ".join(f"{m.label} {number(values[m.key])} {m.unit}"
                                                           for m in METRICS[:3] if m.key in values))


def _client(plan: BenchPlan, start: Start, load: Load, out: Path, env: dict[str, str], timeouts: Timeouts
            ) -> dict[str, float]:
    """One client run; its result JSON moved into ``runs/`` only once it is complete and every request finished."""
    name = run_name(start, load)
    tmp = Path(tempfile.mkdtemp(prefix=".run-", dir=out))
    try:
        cmd = plan.client_command(load, tmp, "result.json")
        run_client(cmd, env, out / "logs" / name.replace(".json", ".client.log"), timeouts.client_s)
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
        os.replace(tmp / "result.json", out / "runs" / name)
        return values
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_plugin(lines: list[str], start: Start, log: Path) -> None:
    why = plugin_refusal(lines, start.variant)
    if why:
        raise BenchError(f"{start.label}: {why}; its runs would not be the {start.variant.name} variant's, so none "
                         f"is reported (log: {log})")


def _completed(plan: BenchPlan, out: Path) -> list[RunResult]:
    runs = []
    for start in plan.starts():
        for load in plan.loads:
            path = out / "runs" / run_name(start, load)
            try:
                values = values_of(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
            runs.append(RunResult(start, load, values, str(path.relative_to(out))))
    return runs


def _claim(out: Path, plan: BenchPlan) -> None:
    """Make ``out`` this plan's folder, or find it already is; another plan's folder is refused."""
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
            raise UsageError(f"{out} holds another bench-serve plan (plan.json differs)",
                             hint="give another -o, or the same arguments to resume it")
        return
    if any(out.iterdir()):
        raise UsageError(f"{out} is not empty and holds no bench-serve plan", hint="give an empty or new -o")
    _write_json(path, mine)


def _measured(plan: dict[str, Any]) -> dict[str, Any]:
    """What a plan measures: all of it but the port, which a resumed run may change."""
    return {k: v for k, v in plan.items() if k != "port"}


def _write_summary(out: Path, summary: Summary) -> None:
    _write_json(out / "summary.json", summary.to_dict())


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


__all__ = ["Timeouts", "run_bench", "run_name"]
