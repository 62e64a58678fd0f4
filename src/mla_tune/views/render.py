"""Terminal rendering for the CLI: progress bars and tables (rich). The only module that formats for people.

rich, the tables and the study summaries are imported where they are drawn, so a listing does not pay for them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..records import Confirmation, StudyName
from ..space import format_config
from ..stats import round_sig
from ..study.verdict import judged, verdict_of
from .text import add_row, printable, say

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from ..tables.summary import StudySummary

# In a log (stderr not a terminal), a study's progress is a line when it starts, when its budget is measured, when
# something goes wrong, and otherwise at most every this many seconds: a few lines per study, not one per trial.
LOG_EVERY_S = 30.0


def _table(*headers: Any) -> Table:
    from rich.table import Table

    return Table(*headers)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{round_sig(x, 4):g}"


class _Bars:
    """A rich progress display with one bar per task name (``unit`` after its count), each with a free-text
    ``info`` column. Not on a terminal (a log file, nohup, a CI job) a live bar would show only at the end, so the
    subclasses print a few lines instead (``_log``)."""

    def __init__(self, console: Console, title: str = "{task.description}", unit: str = "") -> None:
        self._title, self._unit = title, unit
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._console, self._lines = console, not console.is_terminal
        self._last: dict[str, str] = {}
        self._said_at: dict[str, float] = {}

    def _log(self, name: str, text: str, *, now: bool) -> None:
        """Print ``name: text`` if ``now`` or nothing was said of ``name`` for ``LOG_EVERY_S``; never twice."""
        if self._last.get(name) == text:
            return
        if not now and time.monotonic() - self._said_at.get(name, -LOG_EVERY_S) < LOG_EVERY_S:
            return
        self._last[name], self._said_at[name] = text, time.monotonic()
        say(self._console, f"{name}: {text}")

    def __enter__(self) -> _Bars:
        return self  # the live display starts with the first bar: an early error prints only its own line

    def __exit__(self, *exc: Any) -> None:
        if self._tasks:
            self._progress.__exit__(*exc)

    def _task(self, name: str, total: int | None) -> Any:
        if self._progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            text = [TextColumn(t, markup=False) for t in (self._title, self._unit, "{task.fields[info]}")]
            self._progress = Progress(text[0], BarColumn(), MofNCompleteColumn(), text[1], text[2],
                                      TimeElapsedColumn(), console=self._console)
        if not self._tasks:
            self._progress.__enter__()
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(printable(name), total=total, info="")
        return self._tasks[name]


def _best_info(p: Any) -> str:
    """The best latency so far and its speedup over vLLM's default; empty while nothing is known (a resumed
    study's first report), never ``best -``."""
    if p.best_ms is None:
        return ""
    return f"best {_ms(p.best_ms)} ms" + (f" (x{p.speedup:.3f} vs default)" if p.speedup else "")


class ProgressView(_Bars):
    """One bar per study: distinct configs measured of the budget, best latency so far, speedup over vLLM's
    default, then the confirmation. In a log: a line when a study starts, when its budget is measured, for each
    new failure or wait, when its confirmation starts and ends, and otherwise every ``LOG_EVERY_S``."""

    def __init__(self, console: Console) -> None:
        super().__init__(console, unit="configs")

    def update(self, p: Any) -> None:
        if self._lines:
            return self._update_line(p)
        task = self._task(p.study, p.total)
        info = self._progress.tasks[task].fields["info"]
        if p.phase == "trial":
            self._progress.update(task, completed=p.done, total=p.total, info=printable(_best_info(p) or info))
        elif p.phase == "confirm":
            self._progress.update(task, info=printable(f"{info.split('  confirm')[0]}  confirming: {p.message}"))
        else:
            self._progress.update(task, info=printable(f"{info.split('  confirm')[0]}  "
                                                      f"{p.message or 'confirmation stored'}"))

    def _update_line(self, p: Any) -> None:
        first = p.study not in self._last
        if p.phase == "trial":
            total = p.total if p.total is not None else "?"
            text = f"{p.done}/{total} configs measured"
            if first and not p.message:
                text = f"measuring up to {total} configs" if p.done == 0 else f"resumed: {text}"
            text += "".join(f", {x}" for x in (_best_info(p), p.message) if x)
            self._log(p.study, text, now=first or bool(p.message) or p.done == p.total)
        elif p.phase == "confirm":
            what = f"confirming {p.message} against vLLM's default" if p.done == 0 else f"confirming: {p.message}"
            self._log(p.study, what, now=p.done == 0)
        else:
            self._log(p.study, p.message or "confirmation stored", now=True)


class SweepView(_Bars):
    """One bar for a sweep: configs measured of the total, the last shape, status and median. In a log: a line
    for each failed measurement, the last one, and otherwise every ``LOG_EVERY_S``."""

    def __init__(self, console: Console, title: str) -> None:
        super().__init__(console, title, unit="measurements")

    def update(self, p: Any) -> None:
        info = (f"round {p.round}/{p.rounds} {p.shape} {p.status}"
                + (f" {_ms(p.median_ms)} ms" if p.median_ms is not None else ""))
        if self._lines:
            return self._log("sweep", f"{p.done}/{p.total} measured, {info}",
                             now=p.done in (1, p.total) or p.status != "ok")
        task = self._task("sweep", p.total)
        self._progress.update(task, completed=p.done, total=p.total, info=printable(info))


def _env_line(env: dict[str, Any]) -> str:
    gpu = env.get("gpu", {})
    line = (f"{gpu.get('name')} (SM {gpu.get('compute_capability')}, {gpu.get('sm_count')} SMs), "
            f"vLLM {env.get('vllm')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, runner {env.get('runner')}")
    return line + (f", recorded {env['recorded']}" if env.get("recorded") else "")


def print_outcome(console: Console, outcome: Any) -> None:
    say(console, f"storage: {outcome.storage}")
    say(console, f"source:  {_env_line(outcome.environment.as_dict())}")
    if outcome.excluded:
        from ..knobs import BACKENDS  # decode backends are left out only by --backend auto, prefill ones by any

        say(console, "left out here: " + "; ".join(f"{'decode' if k in BACKENDS else 'prefill'} {k} ({v})"
                                                    for k, v in outcome.excluded.items()))
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
            params = format_config(win.configs[0]) if len(win.configs) == 1 else f"trial #{win.trial}"
        elif conf is not None:
            verdict, params = _kept(conf), "-"
        else:
            verdict, params = "not confirmed", "-"
        rows.append([s.name, str(s.measured), str(s.failed), _ms(s.baseline_ms), _ms(s.best_ms), verdict,
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


_REPLAY_NOTE = "; replay: replayed from samples recorded elsewhere, not measured here"


def _replayed(summary: StudySummary) -> bool:
    return StudyName.parse(summary.name).gpu.endswith("-replay")


def print_studies(console: Console, summaries: list[StudySummary]) -> None:
    if not summaries:
        say(console, "no studies")
        return
    from rich.table import Column

    replay = all(_replayed(s) for s in summaries)  # each replayed study's name says so too (H100-replay/...)
    name = Column("study", no_wrap=True, min_width=max(len(s.name) for s in summaries))  # never cut short
    t = _table(name, "measured", "failed", "default ms", "best ms", "confirmed speedup", "tuned params",
               "noise floor")
    for row in study_rows(summaries):
        add_row(t, *row)
    say(console, t)
    say(console, "measured: distinct configs, a trial each; default/best ms: the default's trial median and the best "
                 "config on its scale (by its pairing with the default); confirmed speedup: paired rounds against "
                 "vLLM's default, 95% family-wise" + _REPLAY_NOTE * replay)


def print_table(console: Console, table: dict[str, Any], source: str) -> None:
    from ..tables.table import table_rows

    m = table["model"]
    replay = table["provenance"].get("runner") == "replay"
    mark = " (replay)" if replay else ""
    say(console, f"{source}: {table['backend']} on {m['model']} tp{m['tp']} ({m['num_q_heads']} heads), "
                  f"kv {table['kv_cache_dtype']}, block {table.get('block_size')}")
    say(console, f"source: {_env_line(table['provenance'])}, date {table['provenance'].get('date') or '-'}")
    t = _table("shape", "kind", "tuned", "params", f"default ms{mark}", f"tuned ms{mark}", "speedup",
               "CI (95% family-wise)")
    for row in table_rows(table):
        add_row(t, *row)
    say(console, t)
    say(console, "default/tuned ms: medians of the paired confirmation rounds" + _REPLAY_NOTE * replay)


def print_workloads(console: Console, workloads: dict[str, Any]) -> None:
    t = _table("workload", "shapes (@weight)", "description")
    for name, w in workloads.items():
        add_row(t, name, " ".join(s.spec if s.weight == 1 else f"{s.spec}@{s.weight:g}" for s in w.shapes),
                  w.description)
    say(console, t)
    say(console, "ad hoc: --workload spec:8q1s4k@3,256q1s4k@1 (shapes with relative weights) or --traffic FILE")


def print_spaces(console: Console, spaces: dict[str, Any], vllm: str = "", notes: tuple[str, ...] = ()) -> None:
    """Each backend's parameters; ``vllm`` ("vLLM 0.26"): the family whose graph support they follow, and
    ``notes``: what its adapter says a user of that family should know."""
    if vllm:
        say(console, f"search spaces as {vllm} runs them (cuda_graphs only where it replays the backend in full "
                     "CUDA graphs; --vllm for another)")
    t = _table("backend", "parameter", "values", "vLLM default")
    for backend, space in spaces.items():
        for i, p in enumerate(space.parameters):
            add_row(t, backend if i == 0 else "", p.name, " ".join(map(str, p.values())), str(p.default))
    # --backend auto has no file: its first parameter is the backend, then the chosen backend's own parameters
    add_row(t, "auto", "backend", " ".join(b for b in spaces if b != "auto") + " (those that run here)",
              "vLLM's choice here")
    say(console, t)
    for note in notes:
        say(console, f"{vllm}: {note}")


def print_models(console: Console, models: dict[str, Any]) -> None:
    t = _table("model", "heads", "kv_lora_rank", "rope", "nope", "v", "aliases")
    for name, m in models.items():
        d = m.dims
        add_row(t, name, str(d.num_q_heads), str(d.kv_lora_rank), str(d.qk_rope_head_dim), str(d.qk_nope_head_dim),
                  str(d.v_head_dim), ", ".join(m.aliases))
    say(console, t)


def print_backends(console: Console, listing: Any) -> None:
    """A ``catalog.BackendListing``: the runner's environment, or why it cannot start here, then every backend."""
    if listing.environment is not None:
        say(console, f"source: {_env_line(listing.environment.as_dict())}")
    else:
        say(console, f"runner {listing.runner} cannot start here: {listing.unavailable}")
    t = _table("backend", "kind", "available", "reason")
    for s in listing.statuses:
        add_row(t, s.name, s.kind, "yes" if s.available else "no", s.reason)
    say(console, t)
