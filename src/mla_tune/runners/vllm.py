"""The GPU runner: vLLM 0.20's MLA kernels, measured in a worker process under a watchdog.

Importing this module needs neither torch nor vLLM. ``VllmRunner.create`` checks quickly that they are
installed, that vLLM is 0.20.x and that a CUDA GPU is visible. Each ``measure`` sends the case to a worker
process (``spawn``), waits up to a timeout (longer the first time a backend configuration is used: Triton JIT,
vLLM's model inspection) and, on a timeout or a dead worker, kills it and reports the case as data; the next
``measure`` starts a fresh worker. Everything that touches torch or vLLM runs in that worker
(``_vllm_worker`` -> ``_vllm_engine``/``_vllm_timing``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..errors import RunnerUnavailableError, UsageError, one_line
from ..types import BackendStatus, Case, Environment, Measurement, PairedMeasurement, Status
from ..vllm_adapters import FAMILIES, UnsupportedVllmError, adapter_for, supported_versions
from . import Runner, check_same_shape
from ._interleave import composed, merge_arms
from ._vllm_plan import (EngineKey, PlanError, RunnerOptions, capability_refusal, default_case, make_plan,
                         parse_runner_arg, prefill_capability_refusal)

log = logging.getLogger(__name__)

HINT = "run on a GPU host with `pip install 'mla-tune[vllm]'`, or use --runner replay:results/sweeps/h100"
# The worker names the step that failed; when vLLM's default config itself crashes on a shape (TRITON_MLA's
# illegal memory access on KV caches over ~3.7 M tokens in vLLM 0.20), every config of that shape fails there
# too, each costing a worker restart. After this many such failures the shape is answered without a worker.
REFERENCE_STEP = "reference (default config)"
MAX_REFERENCE_FAILURES = 2
WorkerTarget = Callable[[Any, RunnerOptions], None]


def _installed_vllm_version() -> str | None:
    """vLLM's version without importing it: package metadata, else vllm/_version.py next to the package."""
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("vllm")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "_version.py"
        if path.is_file():
            m = re.search(r"__version__\s*=\s*(?:version\s*=\s*)?['\"]([^'\"]+)['\"]", path.read_text())
            if m:
                return m.group(1)
    return None


def _cuda_probe(timeout_s: float = 120.0) -> str | None:
    """Why no CUDA GPU is usable (None if one is), asked of torch in a subprocess so this one stays light."""
    code = ("import torch,sys\nok=torch.cuda.is_available()\n"
            "print('ok' if ok else 'no', torch.__version__, torch.version.cuda)")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"checking for a CUDA GPU timed out after {timeout_s:.0f} s"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return one_line(f"importing torch failed: {last}", 200)
    words = out.stdout.split()
    if not words or words[0] != "ok":
        cuda = words[2] if len(words) > 2 else "?"
        return f"no CUDA GPU visible (torch.cuda.is_available() is False; torch built for CUDA {cuda})"
    return None


def check_available(probe: Callable[[], str | None] = _cuda_probe) -> None:
    """Raise RunnerUnavailableError (one line + hint) if the vLLM runner cannot work here."""
    if importlib.util.find_spec("torch") is None:
        raise RunnerUnavailableError("torch is not installed", hint=HINT)
    if importlib.util.find_spec("vllm") is None:
        raise RunnerUnavailableError("vLLM is not installed", hint=HINT)
    version = _installed_vllm_version()
    try:
        family = adapter_for(version or "unknown")
        if not family.runner_supported:
            ok = ", ".join(a.family for a in FAMILIES if a.runner_supported)
            raise RunnerUnavailableError(
                f"vLLM {version} is installed; mla-tune knows its settings ({family.label}: flags, deploy, the "
                f"plugin) but the vllm runner measures kernels through vLLM {ok} internals only",
                hint="measure in an environment with vLLM 0.20.x, or use --runner replay:PATH")
    except UnsupportedVllmError as e:
        drivable = tuple(a for a in FAMILIES if a.runner_supported)
        raise RunnerUnavailableError(f"vLLM {version or '(unknown version)'} is installed; the vllm runner drives "
                                     f"the internals of vLLM {supported_versions(drivable)} only",
                                     hint="pip install 'mla-tune[vllm]'") from e
    reason = probe()
    if reason:
        raise RunnerUnavailableError(reason, hint=HINT)


class _WorkerDied(Exception):
    pass


class _WorkerTimeout(Exception):
    pass


class _WorkerHandle:
    """One worker process and its pipe; ``request`` waits for the answer up to a timeout."""

    def __init__(self, target: WorkerTarget, options: RunnerOptions) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # Not daemonic: vLLM and Triton may start their own subprocesses from the worker.
        self.proc = ctx.Process(target=target, args=(child, options), name="mla-tune-vllm-worker")
        self.proc.start()
        child.close()
        self.seen: set[EngineKey] = set()
        self.started = False  # torch/vLLM came up in this process (its "started" message)

    def request(self, op: str, payload: Any, timeout_s: float) -> tuple[str, Any, bool]:
        deadline = time.monotonic() + timeout_s
        try:
            self.conn.send((op, payload))
            while True:
                if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                    if not self.proc.is_alive():
                        raise _WorkerDied()
                    raise _WorkerTimeout()
                answer = self.conn.recv()
                if answer[0] == "started":
                    self.started = True
                    continue
                return answer
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise _WorkerDied() from exc

    def exit_description(self) -> str:
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        if code is None:
            return "worker unresponsive"
        return f"worker exited with signal {-code}" if code < 0 else f"worker exited with code {code}"

    def stop(self, graceful: bool = True) -> None:
        if graceful and self.proc.is_alive():
            try:
                self.conn.send(("close", None))
                self.proc.join(timeout=10)
            except (OSError, EOFError, BrokenPipeError):
                pass
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=10)
        self.conn.close()


def _stop_worker(holder: dict) -> None:
    worker = holder.pop("worker", None)
    if worker is not None:
        worker.stop(graceful=False)


class VllmRunner(Runner):
    """Measures cases with vLLM 0.20's MLA impls in a watchdog-guarded worker process.

    Options: ``warmup`` (minimum warm-up calls; more while JIT compiles are still running), ``samples`` (timed
    samples), ``layers`` (max distinct KV caches per sample, to keep caches out of L2), ``timeout_s`` (per case),
    ``first_timeout_s`` (first case of a new backend configuration, worker start-up), ``tol_bf16``/``tol_fp8``
    (numerics gate vs the default config), ``device``, ``seed``, ``rebuild_every_trial`` (no engine caching,
    for bench/overhead.py), ``worker_target`` (tests inject a fake worker function).
    """

    name = "vllm"

    def __init__(self, *, worker_target: WorkerTarget | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(RunnerOptions.__dataclass_fields__) - {"log_path"})
        if unknown:
            raise UsageError(f"unknown VllmRunner option(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(f for f in RunnerOptions.__dataclass_fields__ if f != 'log_path')}")
        fd, log_path = tempfile.mkstemp(prefix="mla-tune-vllm-worker-", suffix=".log")
        os.close(fd)
        self.options = replace(RunnerOptions(**options), log_path=log_path)
        self.gpu = str(self.options.device)
        self._target = worker_target
        self._holder: dict[str, _WorkerHandle] = {}
        self._finalizer = weakref.finalize(self, _stop_worker, self._holder)
        self._env: Environment | None = None
        self._backends: tuple[BackendStatus, ...] | None = None
        self.worker_starts = 0
        self.last_phases: dict[str, float] = {}
        self._keep_log = False  # set when something failed: close() then leaves the log for reading
        self._reference_failures: dict[tuple, list[str]] = {}  # (backend, shape, dims, kv) -> messages

    @classmethod
    def create(cls, arg: str | None = None) -> VllmRunner:
        """``--runner vllm[:key=value,...]``: check the host, then build a runner (no worker yet)."""
        try:
            options = parse_runner_arg(arg)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        check_available()
        return cls(**options)

    @property
    def log_path(self) -> str:
        """The worker's log (tracebacks, faulthandler output); quoted in failure messages."""
        return self.options.log_path

    # -- the worker -------------------------------------------------------------------------------
    def _worker(self) -> _WorkerHandle:
        worker = self._holder.get("worker")
        if worker is not None and not worker.proc.is_alive():
            log.warning("vllm worker is gone (%s); starting a fresh one", worker.exit_description())
            worker.stop(graceful=False)
            worker = None
        if worker is None:
            if self._target is None:
                from ._vllm_worker import serve

                self._target = serve
            worker = _WorkerHandle(self._target, self.options)
            self._holder["worker"] = worker
            self.worker_starts += 1
        return worker

    def _kill_worker(self) -> None:
        _stop_worker(self._holder)

    def _log_tail(self, lines: int = 3) -> str:
        self._keep_log = True
        try:
            text = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])

    def _ask(self, op: str, payload: Any = None, timeout_s: float | None = None) -> Any:
        """A non-measure request; failures raise RunnerUnavailableError with the worker's reason."""
        worker = self._worker()
        try:
            status, value, exiting = worker.request(op, payload, timeout_s or self.options.first_timeout_s)
        except _WorkerTimeout:
            self._kill_worker()
            raise RunnerUnavailableError(f"vllm worker did not answer {op!r} within "
                                         f"{timeout_s or self.options.first_timeout_s:.0f} s",
                                         hint=f"see {self.log_path}") from None
        except _WorkerDied:
            why = worker.exit_description()
            self._kill_worker()
            raise RunnerUnavailableError(one_line(f"vllm worker died during {op!r} ({why}): "
                                                  f"{self._log_tail()}"), hint=f"see {self.log_path}") from None
        if exiting:
            self._kill_worker()
        if status != "ok":
            raise RunnerUnavailableError(one_line(str(value)), hint=f"see {self.log_path}")
        return value

    # -- Runner API -------------------------------------------------------------------------------
    def environment(self) -> Environment:
        if self._env is None:
            self._env = self._ask("environment")
        return self._env

    def backends(self) -> tuple[BackendStatus, ...]:
        if self._backends is None:
            self._backends = tuple(self._ask("backends"))
        return self._backends

    def stats(self) -> dict[str, Any]:
        """Worker counters (engine/metadata builds, cache sizes) plus worker starts: for tests and benches."""
        stats = dict(self._ask("stats", timeout_s=self.options.timeout_s))
        stats["worker_starts"] = self.worker_starts
        return stats

    def measure(self, case: Case) -> Measurement:
        started = time.perf_counter()
        try:
            refusal = self._refuse(case)
            if refusal is not None:
                return refusal
            shape_key = (case.backend, case.shape, case.dims, case.kv_cache_dtype)
            failures = self._reference_failures.get(shape_key, [])
            if len(failures) >= MAX_REFERENCE_FAILURES:
                return Measurement.failed(Status.ERROR, one_line(
                    f"{failures[-1]} (the default config failed {len(failures)} times on this shape: not run again)"))
            m = self._measure_in_worker(case)
            if m.status is Status.ERROR and m.message.startswith(REFERENCE_STEP):
                self._reference_failures.setdefault(shape_key, []).append(m.message)
            return m
        except RunnerUnavailableError:
            raise  # the GPU cannot be used at all: not a result of this config (see _measure_in_worker)
        except Exception as exc:  # noqa: BLE001 - measure never raises
            log.exception("vllm runner failed on %s", case.backend)
            return Measurement.failed(Status.ERROR, one_line(f"runner: {type(exc).__name__}: {exc}"))
        finally:
            self.last_phases.setdefault("parent_total_s", time.perf_counter() - started)

    def _refuse(self, case: Case) -> Measurement | None:
        """Cases refused without a measurement: invalid parameters, kernels this GPU lacks."""
        self.last_phases = {}
        try:
            plan = make_plan(case)
        except PlanError as exc:
            return Measurement.failed(exc.status, one_line(str(exc)))
        cc = self.environment().compute_capability  # unavailable here: raised, no config's failure (see measure)
        reason = capability_refusal(case.backend, cc) or prefill_capability_refusal(
            plan.engine.prefill_backend, cc)
        if not reason and plan.engine.prefill_backend != "auto":
            status = self.backend_status(plan.engine.prefill_backend, "prefill")
            reason = None if status.available else status.reason
        return Measurement.failed(Status.UNSUPPORTED, reason) if reason else None

    def _timeout_for(self, worker: _WorkerHandle, keys: set[EngineKey]) -> float:
        return self.options.timeout_s if keys <= worker.seen else self.options.first_timeout_s

    def _measure_in_worker(self, case: Case) -> Measurement:
        got = self._in_worker("measure", case, self._engine_keys([case]), 1)
        if isinstance(got, tuple) and isinstance(got[0], Status):
            status, message, details = got
            return Measurement.failed(status, message, **details)
        measurement, phases = got
        self.last_phases = dict(phases)
        if measurement.status in (Status.ERROR, Status.TIMEOUT):
            self._keep_log = True
        return measurement

    def measure_paired(self, cases: Sequence[Case]) -> PairedMeasurement:
        """One interleaved recording of ``cases`` in the worker (``Session.measure_paired``); arms refused here
        never reach it, and a refused or failing reference fails every arm."""
        check_same_shape(cases)
        started = time.perf_counter()
        n = len(cases)
        try:
            refused = {}
            for i, case in enumerate(cases):
                m = self._refuse(case)
                if m is not None:
                    refused[i] = m
            if 0 in refused:
                return composed([refused[0]] + [refused.get(i, refused[0]) for i in range(1, n)])
            shape_key = (cases[0].backend, cases[0].shape, cases[0].dims, cases[0].kv_cache_dtype)
            failures = self._reference_failures.get(shape_key, [])
            if len(failures) >= MAX_REFERENCE_FAILURES:
                return PairedMeasurement.all_failed(n, Status.ERROR, one_line(
                    f"{failures[-1]} (the default config failed {len(failures)} times on this shape: not run again)"))
            live = [i for i in range(n) if i not in refused]
            sub = self._paired_in_worker([cases[i] for i in live])
            ref = sub.arms[0]
            if ref.status is Status.ERROR and ref.message.startswith(REFERENCE_STEP):
                self._reference_failures.setdefault(shape_key, []).append(ref.message)
            return merge_arms(n, refused, sub, live)
        except RunnerUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - measure_paired never raises for a config
            log.exception("vllm runner failed on a paired recording")
            return PairedMeasurement.all_failed(n, Status.ERROR, one_line(f"runner: {type(exc).__name__}: {exc}"))
        finally:
            self.last_phases.setdefault("parent_total_s", time.perf_counter() - started)

    def _paired_in_worker(self, cases: list[Case]) -> PairedMeasurement:
        got = self._in_worker("measure_paired", cases, self._engine_keys(cases), len(cases))
        if isinstance(got, tuple) and isinstance(got[0], Status):
            status, message, details = got
            return PairedMeasurement.all_failed(len(cases), status, message, **details)
        paired, phases = got
        self.last_phases = dict(phases)
        if any(m.status in (Status.ERROR, Status.TIMEOUT) for m in paired.arms):
            self._keep_log = True
        return paired

    @staticmethod
    def _engine_keys(cases: Sequence[Case]) -> set[EngineKey]:
        keys = set()
        for case in cases:
            for c in (case, default_case(case)):
                try:
                    keys.add(make_plan(c).engine)
                except PlanError:
                    pass
        return keys

    def _in_worker(self, op: str, payload: Any, keys: set[EngineKey], arms: int) -> Any:
        """Ask the worker to measure; its value, or ``(status, message, details)`` when it hung or died (it is then
        replaced). Raises RunnerUnavailableError when the GPU cannot be used at all."""
        worker = self._worker()
        # the first use of an engine (compiles, vLLM's model inspection) once; each further arm a case's time
        timeout_s = self._timeout_for(worker, keys) + self.options.timeout_s * max(0, arms - 1)
        try:
            status, value, exiting = worker.request(op, payload, timeout_s)
        except (_WorkerTimeout, _WorkerDied) as exc:
            hung = isinstance(exc, _WorkerTimeout)
            why = "no answer" if hung else worker.exit_description()
            self._kill_worker()
            self._keep_log = True
            if not worker.started:  # it never got torch/vLLM up: the host, not this config (see _vllm_worker)
                raise RunnerUnavailableError(
                    one_line(f"the GPU cannot be used here: a new vllm worker stopped while starting torch/vLLM "
                             f"({why}): {self._log_tail()}"),
                    hint=f"check the GPU (nvidia-smi); see {self.log_path}; finished trials are kept, run the same "
                         "command again to resume") from None
            if hung:
                return (Status.TIMEOUT, f"no result within {timeout_s:.0f} s; worker killed (the next case starts a "
                        "fresh one)", {"worker_log": self.log_path})
            return Status.ERROR, one_line(f"{why} while measuring: {self._log_tail()}"), {"worker_log": self.log_path}
        if exiting:
            self._kill_worker()
        else:
            worker.seen |= keys
        if status == "unusable":
            # torch/vLLM could not start (on the H200, after TRITON_MLA's illegal memory accesses, every new
            # process failed "CUDA driver initialization"): recording that as each config's failure would mark
            # every later config of every study failed. Stop instead; the trial is measured again on resume.
            self._keep_log = True
            raise RunnerUnavailableError(f"the GPU cannot be used here: {value}",
                                         hint="check the GPU (nvidia-smi); finished trials are kept, run the same "
                                              "command again to resume")
        if status != "ok":
            return Status.ERROR, one_line(str(value)), {}
        return value

    def close(self) -> None:
        """Stop the worker; remove its log unless a case failed (then failure messages point at it)."""
        worker = self._holder.pop("worker", None)
        if worker is not None:
            worker.stop(graceful=True)
        if not self._keep_log:
            Path(self.log_path).unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        """The options this runner measures with (for provenance)."""
        return {k: v for k, v in asdict(self.options).items() if k != "log_path"}


__all__ = ["VllmRunner", "check_available"]
