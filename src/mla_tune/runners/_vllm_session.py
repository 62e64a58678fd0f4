"""The worker's measuring session: caches engines, inputs, metadata and references; measures one case.

A measurement: engine (cached per EngineKey) -> inputs (cached per shape/dims/kv dtype/block size) -> metadata
(cached per threshold and split cap) -> one eager call on fixed inputs for the numerics gate -> warm-up until
JIT compiles are over (and a minimum count and time) -> timed samples of ``layers`` calls over distinct KV
caches, replayed from a CUDA graph when the case says ``cuda_graphs``, until a minimum count and GPU time, re-taken
while the recording drifts (``_timing_policy``), with the GPU's clocks read around it through NVML. ``step``
names the phase in progress for failure messages.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from .. import __version__
from ..types import Case, Environment, Measurement, MLADims, PairedMeasurement, Status
from . import _vllm_engine as eng
from ..vllm_adapters import installed_version
from . import _interleave
from . import _vllm_timing as tm
from ..errors import one_line
from ._nvml import CLOCK_EVENT_MASK, Clocks
from ._timing_policy import timing_details
from ..knobs import detail_key
from ._vllm_plan import (Plan, RunnerOptions, adapter, arm_slots, capability_refusal, classify_failure, default_case,
                         kv_offset_refusal, make_plan)

log = logging.getLogger("mla_tune.runners.vllm.session")
MAX_ENGINES = 32  # engine instances: a paired recording builds one per arm
MAX_REFERENCES = 32


def _driver_version() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - fall back to nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001
        return "missing"


class Session:
    """One GPU's vLLM objects cached across measurements, and the measuring of cases with them.

    ``timer`` makes the timer of each paired recording (``_interleave.Timer``: CUDA events here); tests give a
    fake one, with fakes of torch and of the engine functions, so that this logic runs on CPU."""

    def __init__(self, options: RunnerOptions, timer: Callable[[], _interleave.Timer] | None = None) -> None:
        self.options = options
        self.new_timer: Callable[[], _interleave.Timer] = timer or tm.CudaTimer
        self.device = torch.device("cuda", options.device)
        torch.cuda.set_device(self.device)
        self.step = ""
        self.counters: Counter[str] = Counter()
        self._engines: OrderedDict[Any, eng.Engine] = OrderedDict()
        self._inputs: tuple[Any, tm.Inputs] | None = None
        self._references: OrderedDict[Any, Any] = OrderedDict()
        self._kv_b_proj: dict[MLADims, tm.KVBProj] = {}
        self._model_dirs: dict[MLADims, str] = {}
        self._env: Environment | None = None
        self._clocks: Clocks | None = None

    # -- provenance ---------------------------------------------------------------------------------
    def environment(self) -> Environment:
        if self._env is None:
            p = torch.cuda.get_device_properties(self.device)
            extra = {"l2_mib": f"{getattr(p, 'L2_cache_size', 0) / 2**20:.0f}",
                     "memory_gib": f"{p.total_memory / 2**30:.0f}", "triton": _version("triton"),
                     "flashinfer": _version("flashinfer"), "python": sys.version.split()[0]}
            self._env = Environment(runner="vllm", gpu_name=p.name, compute_capability=f"{p.major}.{p.minor}",
                                    sm_count=p.multi_processor_count, driver=_driver_version(),
                                    cuda=str(torch.version.cuda or "unknown"), torch=torch.__version__,
                                    vllm=eng.vllm_version(), mla_tune=__version__,
                                    extra=tuple(sorted(extra.items())))
        return self._env

    def backends(self) -> tuple:
        return eng.backend_statuses(self.environment().compute_capability)

    def stats(self) -> dict[str, Any]:
        inputs = self._inputs[1] if self._inputs else None
        return {**self.counters, "engines_cached": len(self._engines),
                "batches_cached": len(inputs.batches) if inputs else 0,
                "references_cached": len(self._references),
                "inputs_layers": inputs.layers if inputs else 0,
                "gpu_allocated_gib": round(torch.cuda.memory_allocated(self.device) / 2**30, 3)}

    def recover_from_oom(self) -> None:
        """Free what a failed case left behind, so that the next (smaller) case can run."""
        self._inputs = None
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()

    # -- caches -------------------------------------------------------------------------------------
    def engine(self, key: Any, slot: int = 0) -> eng.Engine:
        """The engine (config, impl, metadata builder) of ``key``; ``slot`` > 0 is another instance of the same key,
        built separately: each arm of a paired recording has its own builder, whose persistent buffers (FA3's
        scheduler metadata under full graphs) no other arm's metadata or graph shares."""
        cached = (key, slot)
        if cached in self._engines:
            self._engines.move_to_end(cached)
            return self._engines[cached]
        dims = key.dims
        if dims not in self._model_dirs:
            self._model_dirs[dims] = eng.write_model_dir(dims)
        if dims not in self._kv_b_proj:
            self._kv_b_proj[dims] = tm.make_kv_b_proj(dims, self.device, self.options.seed)
        engine = eng.build_engine(key, self._model_dirs[dims], self._kv_b_proj[dims], self.device, self)
        self.counters["engine_builds"] += 1
        self._engines[cached] = engine
        while len(self._engines) > MAX_ENGINES:
            old, _ = self._engines.popitem(last=False)
            if self._inputs:
                for k in [k for k in self._inputs[1].batches if k[0] == old]:
                    del self._inputs[1].batches[k]
        return engine

    def inputs(self, case: Case, engine: eng.Engine) -> tm.Inputs:
        # Asked on every call, not only when the inputs are built: another backend may have built them for this
        # shape already. Refused before the kernel faults, since a fault also spoils every later CUDA context.
        refusal = kv_offset_refusal(engine.key.backend, case.shape.requests, engine.block_size, case.dims.head_size,
                                    installed_version())
        if refusal:
            raise eng.UnsupportedCase(refusal)
        key = (case.shape, case.dims, engine.key.kv_cache_dtype, engine.block_size)
        if self._inputs is None or self._inputs[0] != key:
            self._inputs = None  # free the old caches before allocating new ones
            torch.cuda.empty_cache()
            dtype = torch.bfloat16 if engine.key.kv_cache_dtype == "auto" else eng.fp8_dtype()
            o = self.options
            made = tm.make_inputs(case.shape.requests, case.dims, engine.block_size, dtype, self.device, o.seed,
                                  o.layers, o.l2_factor, o.mem_fraction)
            self.counters["input_builds"] += 1
            self._inputs = (key, made)
        return self._inputs[1]

    def batch(self, engine: eng.Engine, inputs: tm.Inputs, plan: Plan, slot: int = 0) -> tm.Batch:
        key = ((plan.engine, slot), plan.metadata_key)
        if key not in inputs.batches:
            inputs.batches[key] = eng.build_batch(engine, inputs, plan, self.device)
            self.counters["metadata_builds"] += 1
        return inputs.batches[key]

    # -- measuring ----------------------------------------------------------------------------------
    def _prepare(self, case: Case, plan: Plan, slot: int = 0) -> tuple[eng.Engine, tm.Inputs, tm.Batch]:
        self.step = "build engine"
        engine = self.engine(plan.engine, slot)
        self.step = "inputs"
        inputs = self.inputs(case, engine)
        self.step = "build metadata"
        return engine, inputs, self.batch(engine, inputs, plan, slot)

    def _output(self, engine: eng.Engine, inputs: tm.Inputs, batch: tm.Batch, plan: Plan) -> torch.Tensor:
        eng.apply_call_settings(engine, plan)
        with engine.context():
            o = eng.forward(engine, batch, inputs.caches[0])
        return tm.compose_output(batch, o, inputs, engine.impl.kv_b_proj.weight)

    def _reference(self, case: Case, plan: Plan) -> tuple[Any, str]:
        """The default config's output on the same inputs (cached), or None and why not."""
        key = (case.backend, case.shape, case.dims, plan.engine.kv_cache_dtype)
        if key not in self._references:
            try:
                ref_plan = make_plan(default_case(case))
                engine, inputs, batch = self._prepare(case, ref_plan)
                self.step = "reference (default config)"
                self._references[key] = (tm.store_reference(self._output(engine, inputs, batch, ref_plan)), "")
                self.counters["reference_builds"] += 1
            except Exception as exc:  # noqa: BLE001 - a missing reference is a detail, not a failure
                status, poisoned = classify_failure([c.__name__ for c in type(exc).__mro__], str(exc))
                if poisoned or status is Status.OOM:
                    raise
                log.warning("no numerics reference for %s: %s", case.backend, exc)
                self._references[key] = (None, one_line(f"no reference: {type(exc).__name__}: {exc}", 120))
            while len(self._references) > MAX_REFERENCES:
                self._references.popitem(last=False)
        return self._references[key]

    def measure(self, case: Case, plan: Plan) -> tuple[Measurement, dict[str, float]]:
        t0 = time.perf_counter()
        self.step = "capability"
        refusal = capability_refusal(case.backend, self.environment().compute_capability)
        if refusal:
            return Measurement.failed(Status.UNSUPPORTED, refusal), {}
        if self.options.rebuild_every_trial:
            self._engines.clear()
            if self._inputs:
                self._inputs[1].batches.clear()
        phases: dict[str, float] = {}
        self._prepare(case, plan)  # fail fast (e.g. an unsupported prefill path) before the reference
        ref, ref_note = self._reference(case, plan)
        engine, inputs, batch = self._prepare(case, plan)
        phases["setup_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.step = "numerics"
        out = self._output(engine, inputs, batch, plan)
        rel_err = tm.relative_error(out, ref) if ref is not None else None
        del out
        phases["numerics_s"] = time.perf_counter() - t1
        details = self._details(engine, inputs, batch, plan)
        if ref_note:
            details["numerics"] = ref_note
        tol = self.options.tolerance(plan.engine.kv_cache_dtype)
        if rel_err is not None and not (rel_err <= tol):  # NaN fails too
            what = "output has NaN/Inf" if math.isnan(rel_err) else f"rel err {rel_err:.3g}"
            msg = f"numerics: {what} vs the default config exceeds tol {tol:g}"
            return Measurement(Status.ERROR, (), msg, rel_err, tuple(sorted(details.items()))), phases
        samples, timing = self._time(engine, inputs, batch, plan, phases)
        details.update(timing)
        phases["total_s"] = time.perf_counter() - t0
        return Measurement(Status.OK, tuple(samples), "", rel_err, tuple(sorted(details.items()))), phases

    # -- paired recordings ------------------------------------------------------------------------------
    def measure_paired(self, cases: list[Case], plans: list[Plan | Measurement]
                       ) -> tuple[PairedMeasurement, dict[str, float]]:
        """Time ``cases`` (arm 0 is vLLM's default) interleaved in one recording (``_interleave.record``).

        Each arm gets its own engine instance (``arm_slots``), metadata, numerics check against the default config's
        output, warm-up and, where its plan says so, its own CUDA graph. An arm refused or failing before the
        recording (a ``Measurement`` in ``plans``, an unsupported path, a numerics failure) is kept as that arm's
        failure and the others are recorded; a failed reference fails them all. An error that poisons the CUDA
        context or runs out of memory propagates (the worker reports it for every arm)."""
        t0 = time.perf_counter()
        phases: dict[str, float] = {}
        n = len(cases)
        failed: list[Measurement | None] = [p if isinstance(p, Measurement) else None for p in plans]
        live = [(i, cases[i], p) for i, p in enumerate(plans) if not isinstance(p, Measurement)]
        slots = arm_slots([p.engine for _, _, p in live])
        cc = self.environment().compute_capability
        prepared: dict[int, tuple[eng.Engine, tm.Inputs, tm.Batch, Plan]] = {}
        details: dict[int, dict[str, str]] = {}
        rel_errs: dict[int, float | None] = {}
        inputs_key = None
        for (i, case, plan), slot in zip(live, slots):
            refusal = capability_refusal(case.backend, cc)
            if refusal:
                failed[i] = Measurement.failed(Status.UNSUPPORTED, refusal)
                continue
            try:
                self.step = "build engine"
                key = (case.shape, case.dims, plan.engine.kv_cache_dtype, self.engine(plan.engine, slot).block_size)
                if inputs_key is not None and key != inputs_key:  # checked before anything replaces the inputs
                    raise eng.UnsupportedCase(f"{case.backend} uses KV blocks of {key[3]} tokens, vLLM's default "
                                              f"{inputs_key[3]}: the two cannot share one paired recording")
                inputs_key = key
                ref, ref_note = self._reference(case, plan)  # the default config's output (cached per shape)
                engine, inputs, batch = self._prepare(case, plan, slot)
                self.step = "numerics"
                out = self._output(engine, inputs, batch, plan)
                rel_err = tm.relative_error(out, ref) if ref is not None else None
                del out
            except Exception as exc:  # noqa: BLE001 - an arm's failure is data, unless it spoils the context
                status, poisoned = classify_failure([c.__name__ for c in type(exc).__mro__], str(exc))
                if poisoned or status is Status.OOM:
                    raise
                failed[i] = _arm_failure(exc, status, self.step)
                continue
            d = self._details(engine, inputs, batch, plan)
            if ref_note:
                d["numerics"] = ref_note
            tol = self.options.tolerance(plan.engine.kv_cache_dtype)
            if rel_err is not None and not (rel_err <= tol):
                what = "output has NaN/Inf" if math.isnan(rel_err) else f"rel err {rel_err:.3g}"
                failed[i] = Measurement(Status.ERROR, (), f"numerics: {what} vs the default config exceeds tol {tol:g}",
                                        rel_err, tuple(sorted(d.items())))
                continue
            prepared[i], details[i], rel_errs[i] = (engine, inputs, batch, plan), d, rel_err
        phases["setup_s"] = time.perf_counter() - t0
        if failed[0] is not None:
            why = failed[0]
            other = Measurement.failed(why.status, one_line(f"vLLM's default config failed, nothing to compare with: "
                                                            f"{why.message}"))
            return PairedMeasurement((why,) + (other,) * (n - 1), (None,) * n), phases
        recording, timing = self._record_interleaved(prepared, details, phases, failed)
        if failed[0] is not None:  # the reference failed its warm-up or capture: nothing to compare with
            why = failed[0]
            other = Measurement.failed(why.status, one_line(f"vLLM's default config failed, nothing to compare with: "
                                                            f"{why.message}"))
            return PairedMeasurement((why,) + (other,) * (n - 1), (None,) * n), phases
        arm_details = [details.get(i, {}) for i in range(n)]
        m = _interleave.paired_measurement(failed, recording, arm_details, [rel_errs.get(i) for i in range(n)], timing)
        phases["total_s"] = time.perf_counter() - t0
        return m, phases

    def _record_interleaved(self, prepared: dict[int, tuple[eng.Engine, tm.Inputs, tm.Batch, Plan]],
                            details: dict[int, dict[str, str]], phases: dict[str, float],
                            failed: list[Measurement | None]) -> tuple[_interleave.Recording | None, dict[str, str]]:
        """Warm up every prepared arm, capture the graphed ones, then record them interleaved. An arm whose warm-up
        or capture fails (without spoiling the context) becomes that arm's failure in ``failed``; None when the
        reference is among them (nothing is recorded)."""
        replays: list[Any] = []
        eager: list[bool] = []
        graphs = []
        t = time.perf_counter()
        for i in sorted(prepared):
            engine, inputs, batch, plan = prepared[i]

            def run(engine=engine, inputs=inputs, batch=batch, plan=plan) -> None:
                eng.apply_call_settings(engine, plan)  # per-call knobs of this arm (TRITON's forced splits, ...)
                with engine.context():
                    for cache in inputs.caches:
                        eng.forward(engine, batch, cache)

            try:
                self.step = f"warm-up (arm {i})"
                details[i]["warmup_calls"] = str(tm.warm_up(run, self.options.warmup_policy))
                if eng.TRITON.used is not None and engine.key.backend == "TRITON_MLA":
                    details[i]["num_kv_splits"] = str(eng.TRITON.used)
                details[i]["timing"] = "graph" if plan.cuda_graphs else "eager"
                if plan.cuda_graphs:
                    self.step = f"CUDA graph capture (arm {i})"
                    graph = tm.capture(run)
                    graphs.append(graph)
                    replays.append(graph.replay)
                else:
                    replays.append(run)
                eager.append(not plan.cuda_graphs)
            except Exception as exc:  # noqa: BLE001 - as in measure_paired's preparation
                status, poisoned = classify_failure([c.__name__ for c in type(exc).__mro__], str(exc))
                if poisoned or status is Status.OOM:
                    raise
                failed[i] = _arm_failure(exc, status, self.step)
                if i == 0:
                    return None, {}
        phases["warmup_s"] = time.perf_counter() - t
        self.step = "timing (interleaved)"
        t = time.perf_counter()
        clocks = self.clocks()
        layers = next(iter(prepared.values()))[1].layers
        rec = _interleave.record(replays, layers, self.new_timer(), self.options.paired_policy, self.options.seed,
                                 clocks.read, eager=eager)
        phases["timed_s"] = time.perf_counter() - t
        del graphs
        timing = dict(clocks.details(list(rec.readings)))
        share = _interleave.event_share(rec.readings, lambda r: r.reasons, CLOCK_EVENT_MASK)
        if share is not None:
            timing["clock_event_share"] = f"{share:.2f}"
        return rec, timing

    def _time(self, engine: eng.Engine, inputs: tm.Inputs, batch: tm.Batch, plan: Plan,
              phases: dict[str, float]) -> tuple[list[float], dict[str, str]]:
        eng.apply_call_settings(engine, plan)

        def run() -> None:
            for cache in inputs.caches:
                eng.forward(engine, batch, cache)

        with engine.context():
            self.step = "warm-up"
            t = time.perf_counter()
            calls = tm.warm_up(run, self.options.warmup_policy)
            phases["warmup_s"] = time.perf_counter() - t
            self.step = "timing (CUDA graph capture and replay)" if plan.cuda_graphs else "timing (eager)"
            t = time.perf_counter()
            clocks = self.clocks()
            rec = tm.sample(run, inputs.layers, plan.cuda_graphs, self.options.sampling, clocks.read)
            phases["timed_s"] = time.perf_counter() - t
        timing = {"timing": "graph" if plan.cuda_graphs else "eager", "warmup_calls": str(calls),
                  **timing_details(rec.samples_ms, rec.retakes, self.options.sampling),
                  **clocks.details(rec.readings)}
        if eng.TRITON.used is not None:
            timing["num_kv_splits"] = str(eng.TRITON.used)
        return rec.samples_ms, timing

    def clocks(self) -> Clocks:
        if self._clocks is None:
            p = torch.cuda.get_device_properties(self.device)
            try:
                bus = f"{p.pci_domain_id:08X}:{p.pci_bus_id:02X}:{p.pci_device_id:02X}.0"
            except (AttributeError, TypeError, ValueError):  # older torch: NVML index from CUDA_VISIBLE_DEVICES
                bus = None
            self._clocks = Clocks(bus, self.device.index or 0)
        return self._clocks

    def _details(self, engine: eng.Engine, inputs: tm.Inputs, batch: tm.Batch, plan: Plan) -> dict[str, str]:
        d = {"prefill": engine.prefill, "block_size": str(engine.block_size), "layers": str(inputs.layers),
             "decode_tokens": str(batch.num_decode_tokens), "prefill_tokens": str(batch.num_prefill_tokens),
             "reorder_batch_threshold": str(batch.threshold),
             "kv_cache_dtype": "fp8" if plan.engine.kv_cache_dtype == "fp8" else "bf16"}
        for name, path in adapter().metadata_reports.get(engine.key.backend, {}).items():
            value = batch.meta
            for part in path.split("."):  # where vLLM's metadata says what ran (the adapter names it)
                value = getattr(value, part, None)
            if value is not None:
                d[detail_key(name)] = str(value)
        if plan.cutlass_splits is not None:
            d["num_kv_splits"] = str(plan.cutlass_splits)
        return d


def _arm_failure(exc: BaseException, status: Status, step: str) -> Measurement:
    """One arm's failure as data: an unsupported path says why in its own words, anything else names the step."""
    text = str(exc) or type(exc).__name__
    return Measurement.failed(status, one_line(text if status is Status.UNSUPPORTED else
                                               f"{step}: {type(exc).__name__}: {text}"))
