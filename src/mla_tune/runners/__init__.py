"""The runner interface every measurement goes through, and the registry that finds runners by name.

A runner turns a ``Case`` into a ``Measurement`` and says where its numbers come from (``Environment``).
Implementations: ``vllm`` (vLLM's MLA kernels on the local GPU) and ``replay:PATH`` (recorded sweeps).
Tests register their own. ``torch``/``vllm`` are imported by the vllm runner only, on first use.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from ..errors import UnknownNameError
from ..types import BackendStatus, Case, Environment, Measurement


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
        """Measure one case: raw per-call latencies, or a failure status with its reason."""

    def unanswerable(self, case: Case) -> str | None:
        """Why this runner can tell up front that it cannot measure ``case`` (None: it will try)."""
        return None

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


RunnerFactory = Callable[[str | None], Runner]
_REGISTRY: dict[str, RunnerFactory] = {}


def register_runner(name: str, factory: RunnerFactory) -> None:
    """Make ``--runner NAME[:ARG]`` build a runner with ``factory(ARG or None)``."""
    _REGISTRY[name] = factory


def runner_names() -> list[str]:
    _register_builtin()
    return sorted(_REGISTRY)


def make_runner(spec: str) -> Runner:
    """``vllm`` or ``replay:results/sweeps/h100`` -> a runner. Unknown names list the valid ones."""
    _register_builtin()
    name, _, arg = spec.partition(":")
    if name not in _REGISTRY:
        raise UnknownNameError("runner", name, [f"{n}" for n in _REGISTRY])
    return _REGISTRY[name](arg or None)


def _register_builtin() -> None:
    if "vllm" in _REGISTRY:
        return

    def vllm_factory(arg: str | None) -> Runner:
        from .vllm import VllmRunner  # the only path to torch/vllm

        return VllmRunner.create(arg)

    def replay_factory(arg: str | None) -> Runner:
        from .replay import ReplayRunner

        return ReplayRunner.open(arg)

    register_runner("vllm", vllm_factory)
    register_runner("replay", replay_factory)


__all__ = ["Runner", "register_runner", "runner_names", "make_runner"]
