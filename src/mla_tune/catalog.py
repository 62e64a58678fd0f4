"""What exists here: workloads, search spaces, model presets and backends, for the listing commands.

Nothing here imports Optuna or opens a storage, so ``mla-tune workloads``, ``spaces`` and ``backends`` answer at
once. ``backends`` never fails for want of a GPU: a runner that cannot start here lists every backend with why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import RunnerUnavailableError
from .knobs import BACKENDS, PREFILL_BACKENDS
from .models import load_models
from .runners import Runner, make_runner
from .space import SearchSpace
from .types import BackendStatus, Environment
from .vllm_adapters import default_adapter
from .workloads import Workload, load_workloads


@dataclass(frozen=True)
class BackendListing:
    """Every decode and prefill backend for one runner: ``environment`` is None when the runner cannot start
    here, and ``unavailable`` then says why (the same line a study would fail with)."""

    runner: str
    environment: Environment | None
    statuses: tuple[BackendStatus, ...]
    unavailable: str | None = None


def list_workloads() -> dict[str, Workload]:
    return load_workloads()


def list_spaces(vllm: str | None = None) -> dict[str, SearchSpace]:
    """Every backend's space as vLLM ``vllm`` runs it (default: the installed one, else 0.20): ``cuda_graphs`` is
    a parameter only where that vLLM replays the backend in full CUDA graphs."""
    adapter = default_adapter(vllm)
    return {b: adapter.search_space(b) for b in BACKENDS}


def list_models() -> dict[str, Any]:
    return load_models()


def list_backends(runner: str | Runner = "vllm") -> BackendListing:
    """Each backend available with ``runner`` or why not. The GPU runner refusing to start here (no torch, no
    GPU, an unsupported vLLM) is an answer, not an error: every backend is listed unavailable with its reason.
    Any other runner's refusal (a replay path without sweeps) is the user's to fix and raises."""
    if not isinstance(runner, str):
        return BackendListing(type(runner).__name__, runner.environment(), runner.backends())
    try:
        r = make_runner(runner)
    except RunnerUnavailableError as e:
        if runner.partition(":")[0] != "vllm":
            raise
        return BackendListing(runner, None, _all_unavailable(e.message), str(e))
    try:
        return BackendListing(runner, r.environment(), r.backends())
    finally:
        r.close()


def _all_unavailable(reason: str) -> tuple[BackendStatus, ...]:
    decode = tuple(BackendStatus(b, "decode", False, reason) for b in BACKENDS)
    return decode + tuple(BackendStatus(p, "prefill", False, reason) for p in PREFILL_BACKENDS if p != "auto")


__all__ = ["BackendListing", "list_backends", "list_models", "list_spaces", "list_workloads"]
