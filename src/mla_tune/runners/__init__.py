"""The runner interface every measurement goes through, and the registry that finds runners by name.

A runner turns a ``Case`` into a ``Measurement`` and says where its numbers come from (``Environment``).
Implementations: ``vllm`` (vLLM's MLA kernels on the local GPU) and ``replay:PATH`` (recorded sweeps).
Tests register their own. ``torch``/``vllm`` are imported by the vllm runner only, on first use.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import UnknownNameError, UsageError
from ..types import BackendStatus, Case, Environment, Measurement, PairedMeasurement


class Runner(abc.ABC):
    """Measures cases. ``measure`` never raises for a failed kernel: failures come back as data."""

    name: str = "runner"
    # The GPU (index among the visible ones) this runner times kernels on, or None when it uses no GPU.
    # Studies lock it so that no two mla-tune processes measure on one GPU at once.
    gpu: str | None = None

    @abc.abstractmethod
    def environment(self) -> Environment:
        """The GPU, versions and runner the measurements come from."""

    @abc.abstractmethod
    def backends(self) -> tuple[BackendStatus, ...]:
        """Every decode and prefill backend with whether it can run here and, if not, why."""

    @abc.abstractmethod
    def measure(self, case: Case) -> Measurement:
        """Measure one case: raw per-call latencies, or a failure status with its reason (a failure of this case
        is data). Raises ``RunnerUnavailableError`` only when nothing can be measured here at all (the GPU or its
        libraries cannot start): that is no config's result, and the study stops instead of recording it."""

    def measure_paired(self, cases: Sequence[Case]) -> PairedMeasurement:
        """Measure configs of one shape against the first, vLLM's default, in one recording, sample by sample
        (``PairedMeasurement``), so that a clock that moves under load hits them alike. Failures are data, as for
        ``measure``; a failed reference fails every arm.

        This fallback, for runners that cannot interleave, measures the cases one after another and says so (its
        pairs have ``blocks == 0``); the vLLM and replay runners record or replay real pairs."""
        from ._interleave import composed

        check_same_shape(cases)
        return composed([self.measure(c) for c in cases])

    def unanswerable(self, case: Case) -> str | None:
        """Why this runner can tell up front that it cannot measure ``case`` (None: it will try)."""
        return None

    def default_backend(self, kv_cache_dtype: str = "auto") -> str | None:
        """The MLA decode backend vLLM picks here unasked (the baseline of ``--backend auto``): the first of its
        priority list for this GPU that is valid with this KV cache dtype (see the vLLM adapter); None: none is."""
        from ..vllm_adapters import adapter_for

        env = self.environment()
        return adapter_for(env.vllm).default_decode_backend(env.compute_capability, kv_cache_dtype)

    def close(self) -> None:
        """Release GPU memory, worker processes, files."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def backend_status(self, name: str, kind: str = "decode") -> BackendStatus:
        for status in self.backends():
            if status.name == name and status.kind == kind:
                return status
        return BackendStatus(name, kind, False, f"{self.name} runner does not know {kind} backend {name}")


class Wrapper(Runner):
    """A runner around another that changes only how it measures: provenance, backends and refusals are the
    inner runner's, and closing it stays its owner's business."""

    def __init__(self, inner: Runner) -> None:
        self.inner, self.name, self.gpu = inner, inner.name, inner.gpu

    def environment(self) -> Environment:
        return self.inner.environment()

    def backends(self) -> tuple[BackendStatus, ...]:
        return self.inner.backends()

    def unanswerable(self, case: Case) -> str | None:
        return self.inner.unanswerable(case)

    def measure_paired(self, cases: Sequence[Case]) -> PairedMeasurement:
        return self.inner.measure_paired(cases)


def check_same_shape(cases: Sequence[Case]) -> None:
    """Arms of one recording measure one shape, model and KV-cache dtype (the configs differ, even the backend)."""
    if not cases:
        raise ValueError("a paired measurement needs at least one case")
    first = cases[0]
    for c in cases[1:]:
        if (c.shape, c.dims, c.kv_cache_dtype) != (first.shape, first.dims, first.kv_cache_dtype):
            raise ValueError("paired cases must share shape, dims and kv-cache dtype")


RunnerFactory = Callable[[str | None], Runner]
# A runner's factory, or its import path "package.module:attr" (imported when the runner is first made).
_REGISTRY: dict[str, RunnerFactory | str] = {}
# The built-in runners by import path: the registry imports no runner (nor the vllm runner's torch) until one
# is made, and the runners import this interface, never the other way round.
_BUILTIN = {"vllm": "mla_tune.runners.vllm:VllmRunner.create", "replay": "mla_tune.runners.replay:ReplayRunner.open"}


def register_runner(name: str, factory: RunnerFactory | str) -> None:
    """Make ``--runner NAME[:ARG]`` build a runner with ``factory(ARG or None)``.

    ``factory`` is a callable or its import path ``"package.module:function"``, imported on first use. Worker
    processes (``--gpus``) find it by that path, so a factory for them must be importable (see ``factory_path``).
    """
    _REGISTRY[name] = factory


def make_runner(spec: str) -> Runner:
    """``vllm`` or ``replay:results/sweeps/h100`` -> a runner. Unknown names list the valid ones."""
    factory = _factory(spec.partition(":")[0])
    if isinstance(factory, str):
        factory = _import_path(factory)
    return factory(spec.partition(":")[2] or None)


def factory_path(spec: str) -> str:
    """The import path (``"package.module:attr"``) of the factory of ``--runner NAME[:ARG]``, for processes that
    must make the runner themselves: like ``multiprocessing``'s spawned processes, ``--gpus`` workers start with
    only the built-in runners and import any other by path.

    A factory that cannot be imported by its name (a lambda, a local function, one defined in ``__main__``) is
    refused here, with the fix, rather than failing in every worker.
    """
    name = spec.partition(":")[0]
    factory = _factory(name)
    if isinstance(factory, str):
        return factory
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    path = f"{module}:{qualname}"
    try:  # == and not `is`: a classmethod (Class.create) is a new bound method at each lookup
        importable = module not in (None, "__main__") and "<" not in qualname and _import_path(path) == factory
    except (ImportError, AttributeError):
        importable = False
    if not importable:
        raise UsageError(f"runner {name} cannot be used by --gpus workers: each imports its factory, and {path} "
                         "cannot be imported by that name", hint=f"define the factory at the top level of an importable module, or "
                                           f"register_runner({name!r}, 'package.module:function')")
    return path


def _factory(name: str) -> RunnerFactory | str:
    _register_builtin()
    if name not in _REGISTRY:
        raise UnknownNameError("runner", name, [f"{n}" for n in _REGISTRY])
    return _REGISTRY[name]


def _import_path(path: str) -> Any:
    """The object at ``"package.module:attr.attr"``."""
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _register_builtin() -> None:
    for name, path in _BUILTIN.items():
        _REGISTRY.setdefault(name, path)


__all__ = ["Runner", "Wrapper", "check_same_shape", "factory_path", "make_runner", "register_runner"]
