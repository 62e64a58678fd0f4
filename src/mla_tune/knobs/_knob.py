"""The knob record: everything mla-tune knows about one tunable vLLM setting, declared in one place.

A knob says which backends have it, which values it takes, vLLM's default on each backend, when it matters for a
batch (the rule ``SearchSpace.resolve`` walks), how the runner applies it, how a serving deployment applies it,
and where a measurement reports the value vLLM's own heuristic chose. vLLM's private names for it (attributes,
config fields) are not here: they differ between vLLM versions and live in ``mla_tune.vllm_adapters``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..types import ParamValue, Shape


class RunnerApply(str, enum.Enum):
    """How the runner puts a value into effect (what a change of it costs between trials)."""

    ENGINE = "engine"  # a config field read at construction: a new config, impl and builder
    BUILDER = "builder"  # a metadata-builder attribute: new metadata, nothing else
    IMPL_CALL = "impl_call"  # an impl attribute read per call: nothing rebuilt
    KERNEL_CALL = "kernel_call"  # an argument of the decode kernel call, forced through a wrapper


class ServingApply(str, enum.Enum):
    """How a serving deployment gets a value."""

    ATTENTION_CONFIG = "attention_config"  # a field of vLLM's --attention-config (global)
    COMPILATION_CONFIG = "compilation_config"  # a field of --compilation-config (global)
    ENV = "env"  # an environment variable vLLM reads (global)
    PLUGIN_PER_BATCH = "plugin_per_batch"  # mla-tune's vLLM plugin, chosen per decode batch size
    PLUGIN_AT_BUILD = "plugin_at_build"  # mla-tune's vLLM plugin, once when the metadata builder is created


@dataclass(frozen=True)
class Situation:
    """What ``matters``/``canonical``/``idle`` see: the batch, the config decided so far, the space."""

    shape: Shape
    config: Mapping[str, ParamValue]
    space: Any  # the SearchSpace being resolved (search spaces sit above knobs, so not imported here)

    @property
    def threshold(self) -> int:
        return self.space.threshold(dict(self.config))

    @property
    def graphed(self) -> bool:
        return bool(self.config.get("cuda_graphs", False))

    @property
    def fp8_kv(self) -> bool:
        return self.space.kv_cache_dtype == "fp8"


def _always(_: Situation) -> bool:
    return True


@dataclass(frozen=True)
class Knob:
    """One tunable setting. Search spaces, the runner's plan, ``flags``/``deploy``, the vLLM plugin and the
    sampler read these records; adding a knob is one ``Knob(...)`` in ``_declarations`` plus its tests."""

    name: str
    type: str  # "int" | "categorical" | "bool": the search-space types it may be declared with
    backends: tuple[str, ...]
    defaults: Mapping[str, ParamValue]  # vLLM's default per backend: the baseline of every study
    description: str
    runner: RunnerApply
    serving: ServingApply
    # The values the knob can take at all (a search space picks some of them); None = any positive int.
    domain: tuple[ParamValue, ...] | None = None
    auto: bool = False  # "auto" (vLLM's heuristic decides) is a value besides the domain
    matters: Callable[[Situation], bool] = _always
    # Equivalent values collapse to one (e.g. thresholds that split a batch alike); None = values are distinct.
    canonical: Callable[[Situation, ParamValue], ParamValue] | None = None
    # The value run when the knob does not matter; None = vLLM's default.
    idle: Callable[[Situation], ParamValue] | None = None
    # Where a measurement's details say what ``auto`` (or vLLM's default) resolved to.
    detail_key: str = ""
    # Backends on which the knob changes the decode pipeline although it is named for prefill.
    affects_decode_on: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        missing = [b for b in self.backends if b not in self.defaults]
        if missing:
            raise ValueError(f"knob {self.name}: no default for {', '.join(missing)}")

    @property
    def report_key(self) -> str:
        return self.detail_key or self.name

    @property
    def per_batch(self) -> bool:
        return self.serving is ServingApply.PLUGIN_PER_BATCH

    def default(self, backend: str) -> ParamValue:
        return self.defaults[backend]

    def accepts(self, value: object) -> bool:
        """Is ``value`` one this knob can take (whatever a search space narrows it to)?"""
        if self.auto and value == "auto":
            return True
        if self.type == "bool":
            return isinstance(value, bool)
        if self.domain is not None:
            return value in self.domain and not isinstance(value, bool)
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    def allowed(self) -> str:
        """The accepted values, for an error message."""
        if self.type == "bool":
            return "true or false"
        head = "'auto' or " if self.auto else ""
        if self.domain is not None:
            return head + ", ".join(map(str, self.domain))
        return head + "a positive integer"

    def value_for(self, situation: Situation, choose: Callable[[], ParamValue]) -> ParamValue:
        """The value run for ``situation``: asked of ``choose`` only when the knob matters here."""
        if not self.matters(situation):
            return self.idle(situation) if self.idle else self.default(situation.space.backend)
        value = choose()
        return self.canonical(situation, value) if self.canonical else value
