"""Terminal rendering for the CLI: progress bars and tables (rich). The only module that formats for people."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .records import Confirmation
from .space import format_config
from .stats import round_sig
from .summary import StudySummary
from .table import table_rows
from .verdict import judged, verdict_of


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{round_sig(x, 4):g}"


class _Bars:
    """A rich progress display with one bar per task name, each with a free-text ``info`` column."""

    def __init__(self, console: Console, title: str = "{task.description}") -> None:
        self._progress = Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
        self._tasks: dict[str, Any] = {}
        # Not a terminal (a log file, nohup, a CI job): a live bar would show only at the end, so print a line per
        # step instead.
        self._console, self._lines = console, not console.is_terminal
        self._last: dict[str, str] = {}

    def _line(self, name: str, text: str) -> None:
        if self._last.get(name) != text:
            self._last[name] = text
            self._console.print(f"{name}: {text}", highlight=False)

    def __enter__(self) -> _Bars:
        return self  # the live display starts with the first bar: an early error prints only its own line

    def __exit__(self, *exc: Any) -> None:
        if self._tasks:
            self._progress.__exit__(*exc)

    def _task(self, name: str, total: int | None) -> Any:
        if not self._tasks:
            self._progress.__enter__()
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(name, total=total, info="")
        return self._tasks[name]


def _best_info(p: Any) -> str:
    return f"best {_ms(p.best_ms)} ms" + (f"  x{p.speedup:.3f} vs default" if p.speedup else "")


class ProgressView(_Bars):
    """One bar per study: trials done of the budget, best latency so far, speedup over vLLM's default."""

    def update(self, p: Any) -> None:
        if self._lines:
            return self._update_line(p)
        task = self._task(p.study, p.total)
        if p.phase == "trial":
            self._progress.update(task, completed=p.done, total=p.total, info=_best_info(p))
        elif p.phase == "confirm":
            self._progress.update(task, info=f"confirming {p.done + 1}/{p.total} ({p.message})")
        else:
            self._progress.update(task, info=self._progress.tasks[task].fields["info"].split("  confirming")[0]
                                  + "  confirmed")

    def _update_line(self, p: Any) -> None:
        if p.phase == "trial":
            text = f"trial {p.done}/{p.total if p.total is not None else '?'}  {_best_info(p)}" + (
                f"  ({p.message})" if p.message else "")
        elif p.phase == "confirm":
            text = f"confirming {p.done + 1}/{p.total} ({p.message})"
        else:
            text = "confirmed"
        self._line(p.study, text)


class SweepView(_Bars):
    """One bar for a sweep: configs measured of the total, the last shape, status and median."""

    def __init__(self, console: Console, title: str) -> None:
        super().__init__(console, title)

    def update(self, p: Any) -> None:
        info = (f"round {p.round}/{p.rounds} {p.shape} {p.status}"
                + (f" {_ms(p.median_ms)} ms" if p.median_ms is not None else ""))
        if self._lines:
            return self._line("sweep", f"{p.done}/{p.total} {info}")
        task = self._task("sweep", p.total)
        self._progress.update(task, completed=p.done, total=p.total, info=info)


def _env_line(env: dict[str, Any]) -> str:
    gpu = env.get("gpu", {})
    line = (f"{gpu.get('name')} (SM {gpu.get('compute_capability')}, {gpu.get('sm_count')} SMs), "
            f"vLLM {env.get('vllm')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, runner {env.get('runner')}")
    return line + (f", recorded {env['recorded']}" if env.get("recorded") else "")


def print_outcome(console: Console, outcome: Any) -> None:
    console.print(f"storage: {outcome.storage}")
    console.print(f"source:  {_env_line(outcome.environment.as_dict())}")
    if outcome.excluded:
        console.print("left out here: " + "; ".join(f"prefill {k} ({v})" for k, v in outcome.excluded.items()))
    print_studies(console, outcome.summaries)


def study_rows(summaries: list[StudySummary]) -> list[list[str]]:
    rows = []
    for s in summaries:
        conf = judged(s.confirmed) if s.confirmed is not None else None
        win = conf.candidates[conf.winner] if conf is not None and conf.winner is not None else None
        if s.best_value is None and s.failed:
            verdict, params = "every config failed", "-"
        elif win is not None:
            verdict = f"x{win.speedup:.3f} {_ci(win.ci)}"
            params = format_config(win.configs[0]) if len(win.configs) == 1 else f"trial {win.trial}"
        elif conf is not None:
            verdict, params = _kept(conf), "-"
        else:
            verdict, params = "not confirmed", "-"
        rows.append([s.name, str(s.measured), str(s.failed), _ms(s.baseline_value), _ms(s.best_value), verdict,
                     params, _floor(conf)])
    return rows


def _ci(ci: Any) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _kept(conf: Confirmation) -> str:
    """Why vLLM's default stays: said only where the best candidate cleared 1 but not the noise floor."""
    ok = [c for c in conf.candidates if c.status == "ok" and c.speedup is not None]
    best = max(ok, key=lambda c: c.speedup) if ok else None
    if best is not None and verdict_of(best, conf.floor) == "under floor":
        return f"default kept: x{best.speedup:.3f} {_ci(best.ci)} did not clear the floor"
    return "default kept"


def _floor(conf: Confirmation | None) -> str:
    """The study's noise floor (vLLM's default against itself); confirmations from before it say not measured."""
    if conf is None:
        return "-"
    if conf.floor is None:
        return "not measured"
    return f"x{conf.floor.speedup:.3f} {_ci(conf.floor.ci)}"


def print_studies(console: Console, summaries: list[StudySummary]) -> None:
    if not summaries:
        console.print("no studies")
        return
    t = Table("study", "measured", "failed", "default ms", "best ms", "confirmed speedup", "tuned params",
              "noise floor")
    for row in study_rows(summaries):
        t.add_row(*row)
    console.print(t)


def print_table(console: Console, table: dict[str, Any], source: str) -> None:
    m = table["model"]
    console.print(f"{source}: {table['backend']} on {m['model']} tp{m['tp']} ({m['num_q_heads']} heads), "
                  f"kv {table['kv_cache_dtype']}, block {table.get('block_size')}")
    console.print(f"source: {_env_line(table['provenance'])}, date {table['provenance'].get('date')}")
    t = Table("shape", "kind", "tuned", "params", "default ms", "best ms", "speedup", "CI (95% family-wise)")
    for row in table_rows(table):
        t.add_row(*row)
    console.print(t)


def print_workloads(console: Console, workloads: dict[str, Any]) -> None:
    t = Table("workload", "shapes", "description")
    for name, w in workloads.items():
        t.add_row(name, " ".join(s.spec if s.weight == 1 else f"{s.spec}*{s.weight:g}" for s in w.shapes),
                  w.description)
    console.print(t)


def print_spaces(console: Console, spaces: dict[str, Any]) -> None:
    t = Table("backend", "parameter", "values", "vLLM default")
    for backend, space in spaces.items():
        for i, p in enumerate(space.parameters):
            t.add_row(backend if i == 0 else "", p.name, " ".join(map(str, p.values())), str(p.default))
    console.print(t)


def print_models(console: Console, models: dict[str, Any]) -> None:
    t = Table("model", "heads", "kv_lora_rank", "rope", "nope", "v", "aliases")
    for name, m in models.items():
        d = m.dims
        t.add_row(name, str(d.num_q_heads), str(d.kv_lora_rank), str(d.qk_rope_head_dim), str(d.qk_nope_head_dim),
                  str(d.v_head_dim), ", ".join(m.aliases))
    console.print(t)


def print_backends(console: Console, env: Any, statuses: Any) -> None:
    console.print(f"source: {_env_line(env.as_dict())}")
    t = Table("backend", "kind", "available", "reason")
    for s in statuses:
        t.add_row(s.name, s.kind, "yes" if s.available else "no", s.reason)
    console.print(t)
