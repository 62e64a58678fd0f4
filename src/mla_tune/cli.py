"""The ``mla-tune`` command line: thin Typer commands that parse, call ``api`` and render."""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from typer.core import TyperGroup

from . import __version__
from .errors import MlaTuneError
from .views.text import printable


# Click's UsageError (BadParameter's base), from the click Typer uses (recent Typers vendor their own).
_CLICK_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class _OneLineErrors(TyperGroup):
    """A command's bad option (out of range, missing, a directory as -o) is one line and exit 2, as every refusal.

    Help is Click's plain text (``rich_markup_mode=None``): no ``<bool>`` after flags, and ``--help`` does not
    import rich. Each command's summary is its docstring's first sentence, wrapped rather than cut off."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [(name, cmd.get_short_help_str(limit=1000)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _CLICK_USAGE_ERROR as e:
            where = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
            typer.echo(printable(f"mla-tune: error: {' '.join(e.format_message().split())}{where}"), err=True)
            raise typer.Exit(e.exit_code) from None


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Measure vLLM's MLA attention settings for your GPU, model and traffic; export tuning tables.")

RUNNER_HELP = "vllm (this GPU) or replay:PATH (recorded sweeps, e.g. replay:results/sweeps/h100)"
# A sweep records what replay plays back: replaying a recording into a new one would only copy it.
SWEEP_RUNNER_HELP = "vllm: measure on this GPU (a sweep records measurements, so the replay runner is refused)"
STORAGE_HELP = ("journal file path, sqlite:///FILE or postgresql://... [default: $MLA_TUNE_STORAGE, else "
                "results/studies.journal]")
MODEL_HELP = "model preset (mla-tune spaces --models)"


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=True, markup=False)  # text as given: [vllm]
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 200  # a log file or a pipe: whole study names and params, not 80-column ellipses
    return console


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into one line on stderr and a non-zero exit; Ctrl-C into a clean stop."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MlaTuneError as e:
            typer.echo(f"mla-tune: error: {printable(e)}", err=True)  # messages quote data from files
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("mla-tune: interrupted; finished trials are kept, run the same command to resume", err=True)
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `mla-tune show | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            raise typer.Exit(141) from None
        except OSError as e:  # a full disk or a vanished file under a write the library did not wrap
            where = f": {e.filename}" if e.filename else ""
            typer.echo(printable(f"mla-tune: error: {e.strerror or e}{where}"), err=True)
            raise typer.Exit(1) from None
        except Exception as e:  # noqa: BLE001 - only to find a library error Optuna re-raised as its own
            cause = _library_error(e)
            if cause is None:
                raise
            typer.echo(f"mla-tune: error: {printable(cause)}", err=True)
            raise typer.Exit(cause.exit_code) from None

    return wrapper


def _library_error(exc: BaseException) -> MlaTuneError | None:
    """The MlaTuneError behind ``exc``, if any: Optuna turns a storage failure during a trial's final write into
    ``AssertionError('Should not reach.')`` with the real error only as its context."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MlaTuneError):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def _warnings_as_lines() -> None:
    """mla-tune's own warnings (a journal repaired, ...) as one line on stderr, like its errors."""
    import warnings

    default = warnings.showwarning

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if category.__module__.startswith("mla_tune"):
            typer.echo(f"mla-tune: warning: {printable(message)}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


# Bounds of the numbers commands take; parsed by Typer, so a bad value is refused before anything runs.
MAX_TIMEOUT_S = 30 * 24 * 3600.0
MAX_SEED = 2**32 - 1  # numpy's seed range, which Optuna's samplers use
MAX_TRIALS = 100_000
MAX_ROUNDS = 1000


def _timeout(value: Optional[float]) -> Optional[float]:
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise typer.BadParameter(f"{value:g} is not a number of seconds in (0, {MAX_TIMEOUT_S:g}]")
    return value


def _checked(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A Typer callback from a library check: its refusal becomes the option's one-line error."""

    def callback(value: Any) -> Any:
        try:
            for v in value if isinstance(value, list) else [value]:
                if v is not None:
                    check(v)
        except MlaTuneError as e:
            raise typer.BadParameter(str(e)) from None
        return value

    return callback


def _spec_bounds(workload: str) -> None:
    """``spec:...`` is bounded on its text (``spec:99999999q1s4k`` would build 10^8 requests before failing);
    ``traffic:FILE`` must be a regular file (a FIFO would hang)."""
    from .workloads import SPEC_PREFIX, TRAFFIC_PREFIX, parse_shapes

    if workload.startswith(SPEC_PREFIX):
        parse_shapes(workload[len(SPEC_PREFIX):])
    elif workload.startswith(TRAFFIC_PREFIX):
        _readable(Path(workload[len(TRAFFIC_PREFIX):]))


def _writable(path: Path) -> None:
    from .tables.export import check_output_path

    check_output_path(path)


def _readable(path: Path) -> None:
    from ._yaml import check_regular_file

    check_regular_file(path)


_workload, _output, _input = _checked(_spec_bounds), _checked(_writable), _checked(_readable)


def _quiet_optuna() -> None:
    import optuna

    # Our own progress replaces Optuna's per-trial lines; failed trials are data, not tracebacks for the terminal.
    optuna.logging.set_verbosity(optuna.logging.ERROR)


TRAFFIC_HELP = "a traffic file (YAML or CSV, as deploy reads) as the workload: the same as --workload traffic:FILE"


def _workload_or_traffic(workload: Any, traffic: Optional[Path]) -> Any:
    """``--traffic FILE`` is ``--workload traffic:FILE``; one of the two is needed (several, where ``workload`` is
    a list of them)."""
    from .errors import UsageError

    given = [] if workload is None else [workload] if isinstance(workload, str) else list(workload)
    if traffic is not None:
        given.append(f"traffic:{traffic}")
    if not given:
        raise UsageError("give --workload W or --traffic FILE", hint="`mla-tune workloads` lists the named ones")
    if isinstance(workload, (str, type(None))):
        if len(given) > 1:
            raise UsageError("give --workload or --traffic, not both")
        return given[0]
    return given


@app.command()
@handle_errors
def study(
    backend: list[str] = typer.Option(..., help="decode backend, e.g. FLASH_ATTN_MLA; repeat for several (one "
                                      "process: vLLM imported and its worker started once); auto searches the "
                                      "backend itself, among those that run here, from vLLM's own choice"),
    workload: Optional[list[str]] = typer.Option(None, callback=_workload, help="named workload (mla-tune "
                                                 "workloads), spec:8q1s4k@3,64q1s4k (shapes @ relative weights) "
                                                 "or traffic:FILE; repeatable"),
    traffic: Optional[Path] = typer.Option(None, callback=_input, help=TRAFFIC_HELP),
    model: str = typer.Option("deepseek-v3", help="model preset (mla-tune spaces --models)"),
    tp: list[int] = typer.Option([1], min=1, max=1024, help="tensor parallelism: query heads per GPU = heads / tp; "
                                 "repeatable"),
    kv_cache_dtype: str = typer.Option("auto", help="auto (bf16) or fp8"),
    trials: Optional[int] = typer.Option(None, min=1, max=MAX_TRIALS,
                                         help="trial budget per study, counting earlier runs [default 24]"),
    timeout: Optional[float] = typer.Option(None, callback=_timeout, help="stop each study after this many seconds"),
    sampler: str = typer.Option("auto", help="auto, tpe, grid or random"),
    storage: Optional[str] = typer.Option(None, help=STORAGE_HELP),
    runner: str = typer.Option("vllm", help=RUNNER_HELP),
    objective: str = typer.Option("per-shape", help="per-shape (a study per shape) or mix (weighted sum)"),
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="sampler seed"),
    export: Optional[Path] = typer.Option(None, callback=_output, help="also write the tuning table to this YAML file"),
    gpus: Optional[str] = typer.Option(None, help="one worker process per GPU, e.g. 0,1,2,3, sharing --storage"),
    confirm_top: int = typer.Option(3, min=1, max=100, help="best configs re-measured against vLLM's default"),
    confirm_rounds: int = typer.Option(6, min=2, max=MAX_ROUNDS, help="paired rounds (A B / B A) per confirmed config"),
    confirm_max_rounds: Optional[int] = typer.Option(
        None, min=2, max=MAX_ROUNDS, help="rounds a confirmation extends to while its noise floor is wider than "
                                          "±1.5% [default: 3 x --confirm-rounds]"),
) -> None:
    """Tune backends on workloads (one study per shape); re-running the same command resumes."""
    from . import api
    from .views.render import ProgressView, print_outcome

    # One workload keeps --workload/--traffic exclusive; several are a list, as the library takes them.
    workload = _workload_or_traffic(workload[0] if len(workload or []) == 1 else workload or None, traffic)
    workload = [workload] if isinstance(workload, str) else workload
    _export_one_engine(export, backend, tp)
    _quiet_optuna()
    if gpus is not None:
        _study_parallel(gpus, export, backend=backend, workload=workload, model=model, tp=tp,
                        kv_cache_dtype=kv_cache_dtype, objective=objective, sampler=sampler,
                        n_trials=trials, timeout_s=timeout, storage=storage, runner=runner, seed=seed,
                        confirm_top=confirm_top, confirm_rounds=confirm_rounds,
                        confirm_max_rounds=confirm_max_rounds)
        _attach_plots(storage, backend, workload, model, tp, kv_cache_dtype)
        return
    with ProgressView(_console(stderr=True)) as view:
        outcome = api.run_study(backend=backend, workload=workload, model=model, tp=tp,
                                kv_cache_dtype=kv_cache_dtype, objective=objective, sampler=sampler,
                                n_trials=trials, timeout_s=timeout, storage=storage, runner=runner, seed=seed,
                                confirm_top=confirm_top, confirm_rounds=confirm_rounds,
                                confirm_max_rounds=confirm_max_rounds, progress=view.update)
    print_outcome(_console(), outcome)
    if export is not None:
        path, table = api.export_table(export, storage=storage, backend=backend[0], model=model, tp=tp[0],
                                       kv_cache_dtype=kv_cache_dtype, workload=_one(workload),
                                       gpu=outcome.environment.fingerprint,
                                       names=[s.name for s in outcome.summaries])
        typer.echo(f"wrote {path}")
    _attach_plots(storage, backend, workload, model, tp, kv_cache_dtype)


def _export_one_engine(export: Optional[Path], backend: list[str], tp: list[int]) -> None:
    """A tuning table is one backend at one TP: ``--export`` with several is refused before anything runs."""
    if export is not None and (len(set(backend)) > 1 or len(set(tp)) > 1):
        raise typer.BadParameter("a table holds one backend at one TP; give one --backend and one --tp, or write "
                                 "each table with `mla-tune export` after the study", param_hint="--export")


def _one(workload: list[str]) -> Optional[str]:
    """The workload a table is limited to: the one given, or none (every stored study of the engine) for several."""
    return workload[0] if len(set(workload)) == 1 else None


def _study_parallel(gpus: str, export: Optional[Path], **kw: Any) -> None:
    """``study --gpus``: a worker per GPU; prints what finished, then fails if any worker did."""
    from . import api
    from .views.render import ProgressView, print_outcome
    from .parallel.scale import raise_for_failures

    with ProgressView(_console(stderr=True)) as view:
        par = api.run_study_parallel(gpus=gpus, progress=view.update, **kw)
    if par.outcome is not None:
        print_outcome(_console(), par.outcome)
        if export is not None and not par.failed:
            path, _ = api.export_table(export, storage=kw["storage"], backend=kw["backend"][0], model=kw["model"],
                                       tp=kw["tp"][0], kv_cache_dtype=kw["kv_cache_dtype"],
                                       workload=_one(kw["workload"]), gpu=par.outcome.environment.fingerprint,
                                       names=[s.name for s in par.outcome.summaries])
            typer.echo(f"wrote {path}")
    raise_for_failures(par)


@app.command("export")
@handle_errors
def export_cmd(
    output: Path = typer.Option(..., "--output", "-o", callback=_output, help="YAML file to write"),
    backend: str = typer.Option(..., help="decode backend of the studies, e.g. FLASH_ATTN_MLA, or auto"),
    model: str = typer.Option("deepseek-v3", help=MODEL_HELP),
    tp: int = typer.Option(1, min=1, max=1024, help="tensor parallelism the studies ran at"),
    kv_cache_dtype: str = typer.Option("auto", help="KV cache dtype of the studies: auto (bf16) or fp8"),
    workload: Optional[str] = typer.Option(None, help="only this workload's shapes (a name, spec:... or "
                                                      "traffic:FILE)"),
    gpu: Optional[str] = typer.Option(None, help="GPU part of the study names, e.g. H100 or H100-replay"),
    storage: Optional[str] = typer.Option(None, help=STORAGE_HELP),
) -> None:
    """Write the confirmed best settings as a YAML tuning table."""
    from . import api
    from .views.render import print_table

    path, table = api.export_table(output, storage=storage, backend=backend, model=model, tp=tp,
                                   kv_cache_dtype=kv_cache_dtype, workload=workload, gpu=gpu)
    print_table(_console(), table, str(path))


@app.command()
@handle_errors
def show(
    table: Optional[Path] = typer.Argument(None, callback=_input,
                                           help="a tuning table YAML; without it, the stored studies"),
    storage: Optional[str] = typer.Option(None, help=STORAGE_HELP),
    backend: Optional[str] = typer.Option(None, help="only studies of this decode backend (or auto)"),
    workload: Optional[str] = typer.Option(None, help="only studies of this workload's shapes (a name, "
                                                      "spec:... or traffic:FILE)"),
    model: Optional[str] = typer.Option(None, help="only studies of this model preset"),
    tp: Optional[int] = typer.Option(None, min=1, max=1024, help="only studies at this tensor parallelism"),
    gpu: Optional[str] = typer.Option(None, help="only studies of this GPU, e.g. H100 or H100-replay"),
) -> None:
    """Print stored studies, or a tuning table, as a terminal table."""
    if table is not None:
        from .tables.export import load_table
        from .views.render import print_table

        print_table(_console(), load_table(table), str(table))
        return
    from . import api
    from .views.render import print_studies

    print_studies(_console(), api.find_studies(storage=storage, backend=backend, workload=workload, model=model,
                                               tp=tp, gpu=gpu))


VLLM_HELP = "vLLM version to write settings for, e.g. 0.26.0 [default: the installed vLLM, else the table's]"


@app.command()
@handle_errors
def flags(
    table: Path = typer.Argument(..., callback=_input, help="a tuning table YAML (mla-tune export)"),
    shape: Optional[str] = typer.Option(None, help="only this entry's shape, e.g. 64q1s4k"),
    vllm: Optional[str] = typer.Option(None, "--vllm", help=VLLM_HELP),
) -> None:
    """Each table entry's params as vLLM serving arguments, with what each value costs the other shapes."""
    from .errors import UnknownNameError
    from .tables.export import load_table
    from .views.render_serving import flag_lines
    from .serving import table_flags
    from .serving.deploy import cautions_for
    from .vllm_adapters import default_adapter

    data = load_table(table)
    version = vllm or _installed_or(str(data["provenance"].get("vllm", "")))
    adapter = default_adapter(version)
    entries = table_flags(data, adapter)
    cautions = cautions_for(data["backend"], adapter, version, data["model"]) if version else ()
    lines = flag_lines(data, entries, adapter, shape, cautions)
    if not lines:
        raise UnknownNameError("shape", shape or "", [f.label for f in entries])
    for line in lines:
        typer.echo(line)


def _installed_or(version: str) -> str:
    from .vllm_adapters import installed_version

    return installed_version() or version


@app.command()
@handle_errors
def deploy(
    tables: list[Path] = typer.Argument(..., callback=_input,
                                        help="tuning tables of one engine (backend, GPU, model dims)"),
    output: Path = typer.Option(..., "--output", "-o", callback=_output, help="the serving profile to write (YAML)"),
    traffic: Optional[Path] = typer.Option(None, callback=_input,
                                           help="traffic file: shapes with weights (YAML or CSV)"),
    workload: Optional[str] = typer.Option(None, help="a named workload as the traffic (its weights)"),
    vllm: Optional[str] = typer.Option(None, "--vllm", help=VLLM_HELP),
) -> None:
    """Turn tables into a serving profile for mla-tune's vLLM plugin (MLA_TUNE_PROFILE=FILE vllm serve ...)."""
    from . import api
    from .views.render_serving import deploy_lines

    result = api.deploy_profile(tables, output, traffic=traffic, workload=workload, vllm=vllm)
    for line in deploy_lines(result, str(output)):
        typer.echo(line)


@app.command()
@handle_errors
def verify(
    target: Path = typer.Argument(..., callback=_input, help="a tuning table or a serving profile"),
    runner: str = typer.Option("vllm", help=RUNNER_HELP),
    rounds: int = typer.Option(4, help="paired rounds per setting at least (each one recording of vLLM's default, "
                                       "the default built again and the setting), 2 or more"),
    max_rounds: int = typer.Option(24, "--max-rounds", help="rounds per setting at most: more are run while the "
                                   "default-against-itself floor is wider than ±0.5% (up to 200)"),
) -> None:
    """Re-measure each tuned setting against vLLM's default here; exit 1 if one is slower beyond noise or fails."""
    from . import api
    from .views.render_serving import verify_lines

    err = _console(stderr=True)
    result = api.verify_target(target, runner=runner, rounds=rounds, max_rounds=max_rounds,
                               progress=lambda m: err.print(printable(m)))
    for line in verify_lines(result):
        typer.echo(line)
    if result.slower or result.failed:
        raise typer.Exit(1)


@app.command("bench-serve", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@handle_errors
def bench_serve(
    ctx: typer.Context,
    profile: Path = typer.Argument(..., callback=_input, help="a serving profile (mla-tune deploy)"),
    model: str = typer.Option(..., "--model", help="what vllm serve loads: a model folder (with its tokenizer) "
                                                   "or a hub id; the server arguments go after --"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="folder for the plan, vLLM's result per "
                                          "run, the logs, summary.json/txt and ratios.png (the same -o resumes)"),
    traffic: Optional[Path] = typer.Option(None, callback=_input, help="a traffic file: each shape's decode "
                                           "batch becomes a concurrency, its context the input length"),
    input_len: Optional[int] = typer.Option(None, "--input-len", help="input tokens per request [default: 2000]"),
    output_len: int = typer.Option(500, "--output-len", help="output tokens per request (--ignore-eos)"),
    concurrency: Optional[str] = typer.Option(None, help="comma-separated concurrencies [default: 8,64,256]"),
    repeats: int = typer.Option(4, help="crossed-over repeats of every variant (at least 2; an even count "
                                        "balances the crossover)"),
    variant: str = typer.Option("default,profile,flags", "--variant",
                                help="comma-separated: default (always), profile, flags"),
    waves: int = typer.Option(4, help="requests per run = waves x concurrency (at least 32)"),
    port: int = typer.Option(8000, help="the servers' port on 127.0.0.1"),
    tokenizer: Optional[str] = typer.Option(None, help="tokenizer for the client [default: the model]"),
    vllm_bin: str = typer.Option("vllm", "--vllm-bin", help="the vllm executable (its serve and bench serve)"),
    seed: int = typer.Option(0, help="the client's random prompts"),
    server_timeout: float = typer.Option(900.0, "--server-timeout", help="seconds a server may take to come up"),
    client_timeout: float = typer.Option(7200.0, "--client-timeout", help="seconds one client run may take"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print every server and client command; start nothing"),
) -> None:
    """Prove a profile on vllm serve with vLLM's own client: vLLM's default, the profile and its values as global
    flags, each in a fresh server, crossed over and repeated; ratios to the default (and of the profile to the flags)
    with intervals."""
    from . import api
    from .errors import UsageError
    from .views.render_prove import dry_run_lines, summary_lines

    if traffic is not None and (input_len is not None or concurrency is not None):
        raise UsageError("--traffic gives the concurrencies and input lengths: drop --input-len and --concurrency")
    try:
        levels = [int(c) for c in (concurrency or "8,64,256").split(",") if c.strip()]
    except ValueError:
        raise UsageError(f"--concurrency {concurrency!r}: expected integers separated by commas") from None
    plan = api.bench_serve_plan(profile, model, list(ctx.args), traffic=traffic, tokenizer=tokenizer,
                                input_len=2000 if input_len is None else input_len, output_len=output_len,
                                concurrency=levels, waves=waves, repeats=repeats,
                                variants=[v.strip() for v in variant.split(",") if v.strip()], port=port,
                                vllm=vllm_bin, seed=seed)
    if dry_run:
        for line in dry_run_lines(plan):
            typer.echo(line)
        return
    if output is None:
        raise UsageError("bench-serve needs -o DIR for its results", hint="or --dry-run to see the commands")
    err = _console(stderr=True)
    try:
        summary = api.bench_serve(plan, output, progress=lambda m: err.print(printable(m)),
                                  server_timeout_s=server_timeout, client_timeout_s=client_timeout)
    except KeyboardInterrupt:
        typer.echo(f"mla-tune: interrupted; completed runs are kept in {output}: the same command resumes", err=True)
        raise typer.Exit(130) from None
    for line in summary_lines(summary):
        typer.echo(line)


@app.command()
@handle_errors
def workloads() -> None:
    """List the named workloads and their shapes."""
    from .catalog import list_workloads
    from .views.render import print_workloads

    print_workloads(_console(), list_workloads())


@app.command()
@handle_errors
def spaces(models: bool = typer.Option(False, "--models", help="list model presets instead"),
           vllm: Optional[str] = typer.Option(None, "--vllm", help="vLLM version whose full-CUDA-graph support "
                                              "the spaces follow, e.g. 0.26.0 [default: the installed vLLM, else "
                                              "0.20]")) -> None:
    """List the search space of every backend as a vLLM runs it (or the model presets)."""
    from .catalog import list_models, list_spaces
    from .views.render import print_models, print_spaces
    from .vllm_adapters import default_adapter

    if models:
        print_models(_console(), list_models())
    else:
        spaces_ = list_spaces(vllm)
        family = default_adapter(vllm)
        print_spaces(_console(), spaces_, family.label, family.notes)


@app.command()
@handle_errors
def backends(runner: str = typer.Option("vllm", help=RUNNER_HELP)) -> None:
    """Which decode and prefill backends can run here, and why not (also without torch or a GPU)."""
    from .catalog import list_backends
    from .views.render import print_backends

    print_backends(_console(), list_backends(runner))


@app.command()
@handle_errors
def sweep(
    backend: list[str] = typer.Option(..., help="decode backend; repeat for several (one process, one file)"),
    workload: list[str] = typer.Option(..., callback=_workload, help="workload or spec:SHAPE; repeatable"),
    output: Path = typer.Option(..., "--output", "-o", callback=_output,
                                help="sweep file (.jsonl); appended to, resumable"),
    model: str = typer.Option("deepseek-v3", help="model preset (see `mla-tune spaces --models`)"),
    tp: int = typer.Option(1, min=1, max=1024, help="tensor-parallel size: query heads per GPU = heads / tp"),
    kv_cache_dtype: str = typer.Option("auto", help="auto (bf16) or fp8"),
    rounds: int = typer.Option(3, min=1, max=100, help="recordings per config, interleaved: each round visits "
                               "every config of a shape in a new order"),
    runner: str = typer.Option("vllm", help=SWEEP_RUNNER_HELP),
) -> None:
    """Measure every config of a space (all raw samples, in interleaved rounds): what replay plays back."""
    from . import api
    from .views.render import SweepView

    title = f"{','.join(backend)} {','.join(workload)} {model} tp{tp}"
    with SweepView(_console(stderr=True), title) as view:
        n = api.run_sweep(backend=backend, workload=workload, output=output, model=model, tp=tp,
                          kv_cache_dtype=kv_cache_dtype, runner=runner, progress=view.update, rounds=rounds)
    typer.echo(f"wrote {n} measurements to {output}")


@app.command()
@handle_errors
def diff(
    a: Path = typer.Argument(..., callback=_input, help="a tuning table YAML (A)"),
    b: Path = typer.Argument(..., callback=_input, help="another tuning table YAML (B), e.g. another GPU or vLLM"),
) -> None:
    """Two tables side by side per shape: settings, confirmed latencies and speedups, where they disagree."""
    from .tables.diff import diff_tables
    from .tables.landscape_io import read_table
    from .views.render_diff import print_diff

    print_diff(_console(), diff_tables(read_table(a), read_table(b)))


@app.command()
@handle_errors
def plot(
    inputs: list[Path] = typer.Argument(..., callback=_input, help="tuning tables (.yaml) and/or sweeps (.jsonl)"),
    output: Path = typer.Option(..., "--output", "-o", help="folder for the PNG files (made if missing)"),
) -> None:
    """PNG heatmaps (speedup over vLLM's default by batch size and context, per knob value) and per-shape charts."""
    from .tables.landscape_io import read_inputs
    from .views.plots import write_pictures

    for path in write_pictures(read_inputs(inputs), output):
        typer.echo(f"wrote {path}")


@app.command()
@handle_errors
def report(
    tables: list[Path] = typer.Argument(..., callback=_input, help="tuning tables (.yaml)"),
    output: Path = typer.Option(..., "--output", "-o", callback=_output, help="the HTML file to write"),
) -> None:
    """One self-contained HTML page: provenance, what to deploy, the plots, what was not tuned and why."""
    from .tables.landscape_io import read_table
    from .views.report import write_report

    typer.echo(f"wrote {write_report([read_table(t) for t in tables], output)}")


def _attach_plots(storage: Optional[str], backend: list[str], workload: list[str], model: str, tp: list[int],
                  kv_cache_dtype: str) -> None:
    """After ``study``: the plots of each confirmed study it ran as Optuna artifacts, for optuna-dashboard.
    Studies that ran are not failed by a picture: a problem here is one warning line."""
    from .views.artifacts import attach_plots, run_studies

    try:
        done = attach_plots(storage, run_studies(backend, workload, model, tp, kv_cache_dtype))
    except (MlaTuneError, OSError) as e:
        typer.echo(f"mla-tune: warning: no plots attached to the studies: {printable(e)}", err=True)
        return
    if done.studies:
        n = len(done.studies)
        typer.echo(f"attached plots to {n} stud{'y' if n == 1 else 'ies'}; see them with: optuna-dashboard "
                   f"{done.storage} --artifact-dir {done.directory}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mla-tune {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print mla-tune's version and exit.")) -> None:
    """mla-tune: measure vLLM's MLA settings instead of trusting heuristics."""


def main() -> None:
    _warnings_as_lines()
    app(prog_name="mla-tune")


if __name__ == "__main__":
    sys.exit(main())
