"""The worker process of the vLLM runner: receives requests over a pipe, answers with picklable values.

The parent (``runners/vllm.py``) owns the watchdog. This side imports torch and vLLM (through
``_vllm_session``/``_vllm_engine``) on its first request, turns every exception into a ``Measurement`` and exits after a CUDA
error that poisons the context, so that the parent starts a fresh process for the next case.

Protocol: the parent sends ``(op, payload)``; the worker answers ``("ok", value, exiting)``,
``("fail", message, exiting)``, or ``("unusable", message, True)`` when torch/vLLM cannot even start here (no
config is to blame: the parent stops measuring instead of failing every config with the same message). A worker
sends ``("started", None, False)`` once torch/vLLM are up in it, before the answer that needed them: a crash or
hang of a worker that never sent it is the host's (CUDA that no longer initializes), not a config's. Ops: ``environment``, ``backends``, ``measure`` (payload: Case; value:
``(Measurement, phases)``), ``measure_paired`` (payload: list of Case, the reference first; value:
``(PairedMeasurement, phases)``), ``stats``, ``close``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from typing import Any

from ..types import Measurement, PairedMeasurement, Status
from ..errors import one_line
from ._vllm_plan import PlanError, RunnerOptions, classify_failure, make_plan

log = logging.getLogger("mla_tune.runners.vllm.worker")

# Set before vLLM is imported: quiet logs, never reach the network, no usage reports.
WORKER_ENV = {"VLLM_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
              "VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _setup_process(options: RunnerOptions) -> None:
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    handlers: list[logging.Handler] = []
    if options.log_path:
        handlers.append(logging.FileHandler(options.log_path))
        import faulthandler

        # A segfault in a kernel library leaves its Python stack in the log the parent quotes.
        faulthandler.enable(open(options.log_path, "a"))  # noqa: SIM115 - must stay open for the process
    logging.basicConfig(level=logging.INFO, handlers=handlers or None,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _failure(exc: BaseException, step: str) -> tuple[Measurement, bool]:
    names = [c.__name__ for c in type(exc).__mro__]
    status, poisoned = classify_failure(names, str(exc))
    where = f"{step}: " if step else ""
    message = one_line(f"{where}{type(exc).__name__}: {exc}")
    if status is Status.UNSUPPORTED and names[0] in ("UnsupportedCase", "PlanError"):
        message = one_line(f"{exc}")
    return Measurement.failed(status, message), poisoned


class _Worker:
    """Request dispatch; the engine session is created on first use (the torch/vLLM import)."""

    def __init__(self, options: RunnerOptions, on_start: Any = None) -> None:
        self.options = options
        self._session: Any = None
        self._on_start = on_start  # called once torch/vLLM are up in this process (see the protocol)

    @property
    def session(self) -> Any:
        if self._session is None:
            from ._vllm_session import Session  # the heavy import: torch, vLLM

            self._session = Session(self.options)
            if self._on_start is not None:
                self._on_start()
        return self._session

    def handle(self, op: str, payload: Any) -> tuple[str, Any, bool]:
        if op == "environment":
            return "ok", self.session.environment(), False
        if op == "backends":
            return "ok", self.session.backends(), False
        if op == "stats":
            return "ok", self.session.stats(), False
        if op == "measure":
            return self._measure(payload)
        if op == "measure_paired":
            return self._measure_paired(payload)
        return "fail", f"unknown request {op!r}", False

    def _measure(self, case: Any) -> tuple[str, Any, bool]:
        started = time.perf_counter()
        try:
            plan = make_plan(case)
        except PlanError as exc:
            return "ok", (Measurement.failed(exc.status, one_line(str(exc))), {}), False
        try:
            session = self.session
        except Exception as exc:  # noqa: BLE001 - the host, not the case (an interrupt is no verdict on the GPU)
            log.error("import torch/vllm failed:\n%s", traceback.format_exc())
            return "unusable", one_line(f"import torch/vllm: {type(exc).__name__}: {exc}"), True
        try:
            measurement, phases = session.measure(case, plan)
            return "ok", (measurement, phases), False
        except BaseException as exc:  # noqa: BLE001 - every failure becomes data
            step = getattr(session, "step", "")
            measurement, poisoned = _failure(exc, step)
            if measurement.status is Status.UNSUPPORTED:
                log.info("measure %s unsupported at %s: %s", case.backend, step, measurement.message)
            else:
                log.error("measure %s failed at %s:\n%s", case.backend, step, traceback.format_exc())
            if measurement.status is Status.OOM:
                session.recover_from_oom()
            phases = {"total_s": time.perf_counter() - started}
            return "ok", (measurement, phases), poisoned


    def _measure_paired(self, cases: Any) -> tuple[str, Any, bool]:
        """Like ``_measure`` for a paired recording: a plan refused is that arm's failure; a failure of the recording
        itself is every arm's."""
        started = time.perf_counter()
        plans: list[Any] = []
        for case in cases:
            try:
                plans.append(make_plan(case))
            except PlanError as exc:
                plans.append(Measurement.failed(exc.status, one_line(str(exc))))
        try:
            session = self.session
        except Exception as exc:  # noqa: BLE001 - the host, not the cases
            log.error("import torch/vllm failed:\n%s", traceback.format_exc())
            return "unusable", one_line(f"import torch/vllm: {type(exc).__name__}: {exc}"), True
        try:
            return "ok", session.measure_paired(list(cases), plans), False
        except BaseException as exc:  # noqa: BLE001 - every failure becomes data
            step = getattr(session, "step", "")
            measurement, poisoned = _failure(exc, step)
            log.error("paired measure failed at %s:\n%s", step, traceback.format_exc())
            if measurement.status is Status.OOM:
                session.recover_from_oom()
            phases = {"total_s": time.perf_counter() - started}
            n = len(cases)
            return "ok", (PairedMeasurement((measurement,) * n, (None,) * n), phases), poisoned


def serve(conn: Any, options: RunnerOptions) -> None:
    """The default worker target: answer requests until ``close``, EOF, or a poisoned CUDA context."""
    _setup_process(options)
    worker = _Worker(options, on_start=lambda: conn.send(("started", None, False)))
    while True:
        try:
            op, payload = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if op == "close":
            conn.send(("ok", None, True))
            return
        try:
            status, value, exiting = worker.handle(op, payload)
        except BaseException as exc:  # noqa: BLE001 - environment/backends failures go back as text
            log.error("%s failed:\n%s", op, traceback.format_exc())
            names = [c.__name__ for c in type(exc).__mro__]
            status, value, exiting = "fail", one_line(f"{op}: {type(exc).__name__}: {exc}"), \
                classify_failure(names, str(exc))[1]
        conn.send((status, value, exiting))
        if exiting:
            log.error("exiting after a CUDA error that poisons the context")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(3)  # skip atexit/CUDA teardown, which can hang on a broken context
