"""What a study request turns into: one Optuna study per shape, or one for the workload mix; names and attrs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..records import StudyName
from ..space import config_key
from ..space_auto import AnySpace
from ..types import Environment, MLADims, ParamValue, dims_dict
from ..workloads import Workload, WorkloadShape

OBJECTIVES = ("per-shape", "mix")
KV_CACHE_DTYPES = ("auto", "fp8")
# Study attrs schema. 2: trial values are latencies relative to vLLM's default recorded with it (VALUE_KIND);
# 1: latencies in ms from separate recordings (a per-shape study's multiplied by its weight, a bug fixed with 2).
STUDY_SCHEMA_VERSION = 2
VALUE_KIND = "latency_vs_default"


@dataclass(frozen=True)
class StudyRequest:
    """Everything a user asks for with ``mla-tune study``, validated."""

    backend: str
    workload: Workload
    dims: MLADims
    kv_cache_dtype: str = "auto"
    objective: str = "per-shape"
    sampler: str = "auto"
    n_trials: int | None = None  # total per study, counting trials from earlier runs
    timeout_s: float | None = None
    seed: int | None = 0
    confirm_top: int = 3
    confirm_rounds: int = 6
    confirm_max_rounds: int | None = None  # rounds a noisy confirmation may extend to (None: 3 x confirm_rounds)


@dataclass(frozen=True)
class StudyTarget:
    """One Optuna study: its name, the shapes its objective measures, and the space it searches."""

    name: str
    shapes: tuple[WorkloadShape, ...]
    space: AnySpace  # one backend's, or the composite of ``--backend auto``
    request: StudyRequest

    @property
    def label(self) -> str:
        """The shape (per-shape) or ``mix:<workload>`` part of the name."""
        return StudyName.parse(self.name).label

    def resolve(self, choose: Any) -> list[dict[str, ParamValue]]:
        """The config each shape runs for one set of answers (shared answers across shapes in a mix)."""
        memo: dict[str, ParamValue] = {}

        def ask(p):
            if p.name not in memo:
                memo[p.name] = choose(p)
            return memo[p.name]

        return [self.space.resolve(s.shape, ask) for s in self.shapes]

    def default_configs(self) -> list[dict[str, ParamValue]]:
        return self.resolve(lambda p: p.default)

    def enumerate(self) -> tuple[list[dict[str, ParamValue]], list[str]]:
        """Every distinct set of answers and its key, the baseline first (what an exhaustive search visits)."""
        if len(self.shapes) == 1:
            configs = self.space.expand(self.shapes[0].shape)
            return [self.space.answers(c) for c in configs], [config_set_key([c]) for c in configs]
        answers, keys, seen = [], [], set()
        for combo in self.space.product():
            key = config_set_key(self.resolve(lambda p, c=combo: c[p.name]))
            if key not in seen:
                seen.add(key)
                answers.append(combo)
                keys.append(key)
        return answers, keys


def config_set_key(configs: list[dict[str, ParamValue]]) -> str:
    """Canonical JSON of the configs a trial runs: equal keys run the same kernels."""
    return json.dumps([dict(config_key(c)) for c in configs], sort_keys=True)


def study_name(env: Environment, request: StudyRequest, label: str) -> StudyName:
    """``H100/deepseek-v3-tp1/FLASH_ATTN_MLA/<label>``: which GPU, model (TP, KV dtype), backend and shapes."""
    kv = "" if request.kv_cache_dtype == "auto" else f"-kv{request.kv_cache_dtype}"
    return StudyName(env.fingerprint, f"{request.dims.label}{kv}", request.backend, label)


def plan(request: StudyRequest, env: Environment, space: AnySpace) -> list[StudyTarget]:
    if request.objective == "mix":
        name = study_name(env, request, f"mix:{request.workload.name}")
        return [StudyTarget(str(name), request.workload.shapes, space, request)]
    return [StudyTarget(str(study_name(env, request, s.spec)), (s,), space, request)
            for s in request.workload.shapes]


def study_attrs(target: StudyTarget, env: Environment) -> dict[str, Any]:
    """What a study records about itself (study user attrs), for export, show and the dashboard."""
    r = target.request
    return {
        "schema_version": STUDY_SCHEMA_VERSION,
        "value": VALUE_KIND,
        "backend": r.backend,
        "model": dims_dict(r.dims),
        "kv_cache_dtype": r.kv_cache_dtype,
        "workload": r.workload.name,
        "objective": r.objective,
        "shapes": [{"spec": s.spec, "weight": s.weight} for s in target.shapes],
        "space": {p.name: {"default": p.default, "values": list(p.values())} for p in target.space.parameters},
        "environment": env.as_dict(),
    }
