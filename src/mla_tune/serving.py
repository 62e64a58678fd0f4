"""From a tuning table's params to vLLM 0.20 serving settings: pure functions, no vLLM import.

vLLM reads these knobs per deployment (``--attention-config``, ``--compilation-config``, an environment variable),
not per batch shape; a table gives them per shape, so ``mla-tune flags`` prints them per entry and the deployment
picks the entry that matches its traffic (or tunes with ``--objective mix`` for one global choice).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from .runners._vllm_plan import PREFILL_OVERRIDES
from .table import entry_label


@dataclass(frozen=True)
class ServingSettings:
    attention_config: dict[str, Any] = field(default_factory=dict)
    compilation_config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    not_exposed: tuple[str, ...] = ()  # params vLLM 0.20 offers no setting for

    def args(self) -> str:
        """``VAR=N vllm serve MODEL ...``-style arguments for these settings (shell-quoted)."""
        parts = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        if self.attention_config:
            parts += ["--attention-config", shlex.quote(json.dumps(self.attention_config, sort_keys=True))]
        if self.compilation_config:
            parts += ["--compilation-config", shlex.quote(json.dumps(self.compilation_config, sort_keys=True))]
        return " ".join(parts)


def serving_settings(backend: str, params: dict[str, Any], defaults: dict[str, Any] | None = None
                     ) -> ServingSettings:
    """The vLLM 0.20 settings that run ``params`` on ``backend``; params equal to ``defaults`` need none."""
    defaults = defaults or {}
    attention: dict[str, Any] = {"backend": backend}
    compilation: dict[str, Any] = {}
    env: dict[str, str] = {}
    missing: list[str] = []
    for name, value in sorted(params.items()):
        if name in defaults and defaults[name] == value:
            continue
        if name == "prefill_backend":
            attention.update(PREFILL_OVERRIDES[str(value)])
        elif name == "max_num_splits":
            attention["flash_attn_max_num_splits_for_cuda_graph"] = int(value)
        elif name == "cuda_graphs":
            # vLLM's default FULL_AND_PIECEWISE replays attention in full graphs for uniform decode batches;
            # PIECEWISE runs attention eagerly between the graphed pieces
            compilation["cudagraph_mode"] = "FULL_AND_PIECEWISE" if value else "PIECEWISE"
        elif name == "num_kv_splits" and backend == "CUTLASS_MLA":
            if value != "auto":
                env["FORCE_NUM_KV_SPLITS"] = str(value)
        else:  # TRITON_MLA's split count; the reorder threshold (follows num_speculative_tokens in vLLM 0.20)
            missing.append(f"{name}={value}")
    return ServingSettings(attention, compilation, env, tuple(missing))


def entry_settings(table: dict[str, Any], entry: dict[str, Any]) -> list[tuple[str, ServingSettings]]:
    """(shape, settings) for a table entry; a mix entry's params are one config per shape."""
    params, defaults = entry.get("params"), entry.get("default_params")
    if isinstance(params, list):
        shapes = [s["spec"] for s in entry.get("shapes", [])]
        defaults = defaults if isinstance(defaults, list) else [None] * len(params)
        return [(spec, serving_settings(table["backend"], p, d)) for spec, p, d in zip(shapes, params, defaults)]
    return [(entry_label(entry), serving_settings(table["backend"], params or {}, defaults))]


__all__ = ["ServingSettings", "serving_settings", "entry_settings"]
