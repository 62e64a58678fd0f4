"""``--backend auto``: the decode backend searched as a knob, then the parameters of the backend chosen.

Which backend wins is a measured question on a GPU that runs several (FlashMLA, FA MLA and Triton MLA on Hopper).
A study asks ``backend`` first, its default being the backend vLLM picks unasked there (the runner says which, from
the vLLM adapter's priority list), then that backend's own parameters under names prefixed with it
(``FLASHMLA.reorder_batch_threshold``): one knob has other values and defaults on another backend, and Optuna refuses
one parameter name with two distributions. A config as run is ``{"backend": B, **B's params}``, so configs of two
backends never compare equal, and ``split_config`` gives the runner the backend and the params apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from .space import Parameter, ParameterLookup, SearchSpace, distinct_configs
from .types import ParamValue, Shape

AUTO = "auto"  # the --backend value
BACKEND = "backend"  # the parameter (and config key) naming the decode backend


def prefixed(backend: str, p: Parameter) -> Parameter:
    """``p`` as the composite asks it: named ``BACKEND.param``."""
    return replace(p, name=f"{backend}.{p.name}")


@dataclass(frozen=True)
class AutoSpace(ParameterLookup):
    """The decode backends that can run here, each with its own space; ``default_backend`` is vLLM's choice here.

    Built unsettled (every backend, no default) from the request alone; ``settled`` narrows it once a runner says
    which backends run here and which one vLLM picks (``study.setup.settle_auto``)."""

    members: tuple[SearchSpace, ...]
    default_backend: str | None = None
    kv_cache_dtype: str = "auto"
    backend: str = AUTO

    def settled(self, backends: tuple[str, ...], default: str) -> AutoSpace:
        """Only ``backends`` (in this space's order), with vLLM's ``default`` among them as the baseline."""
        members = tuple(m for m in self.members if m.backend in backends)
        if default not in {m.backend for m in members}:
            raise ValueError(f"vLLM's default backend {default} is not among {', '.join(backends)}")
        return replace(self, members=members, default_backend=default)

    def with_members(self, members: tuple[SearchSpace, ...]) -> AutoSpace:
        return replace(self, members=members)

    def under_graphs(self, graph_support: Callable[[str], str]) -> AutoSpace:
        """Each member under its backend's graph support in the target vLLM (``SearchSpace.under_graphs``)."""
        return replace(self, members=tuple(m.under_graphs(graph_support(m.backend)) for m in self.members))

    def for_kv(self, kv_cache_dtype: str) -> AutoSpace:
        members = tuple(m.for_kv(kv_cache_dtype) for m in self.members)
        return replace(self, members=members, kv_cache_dtype=members[0].kv_cache_dtype if members else "auto")

    @property
    def choice(self) -> Parameter:
        """The first question: which decode backend."""
        if self.default_backend is None:
            raise ValueError("an auto space needs its runner's backends first (study.setup.settle_auto)")
        return Parameter(BACKEND, "categorical", self.default_backend, tuple(m.backend for m in self.members),
                         description="MLA decode backend (default: the one vLLM picks on this GPU)")

    @property
    def parameters(self) -> tuple[Parameter, ...]:
        return (self.choice, *(prefixed(m.backend, p) for m in self.members for p in m.parameters))

    def member(self, backend: str) -> SearchSpace:
        for m in self.members:
            if m.backend == backend:
                return m
        raise KeyError(backend)

    def defaults(self) -> dict[str, ParamValue]:
        return {p.name: p.default for p in self.parameters}

    def resolve(self, shape: Shape, choose: Callable[[Parameter], ParamValue]) -> dict[str, ParamValue]:
        """The backend ``choose`` picks, then its own parameters as its space resolves them (asked prefixed)."""
        backend = str(choose(self.choice))
        own = self.member(backend).resolve(shape, lambda p: choose(prefixed(backend, p)))
        return {BACKEND: backend, **own}

    def default_config(self, shape: Shape) -> dict[str, ParamValue]:
        """vLLM's default backend with its defaults: the baseline."""
        return self.resolve(shape, lambda p: p.default)

    def expand(self, shape: Shape) -> list[dict[str, ParamValue]]:
        """Every distinct config of every backend for ``shape``; the baseline first."""
        return distinct_configs([self.default_config(shape),
                                 *({BACKEND: m.backend, **c} for m in self.members for c in m.expand(shape))])

    def answers(self, config: dict[str, ParamValue]) -> dict[str, ParamValue]:
        """The answers that run ``config``: its backend, and its params under that backend's prefix."""
        backend = config[BACKEND]
        return {BACKEND: backend, **{f"{backend}.{k}": v for k, v in config.items() if k != BACKEND}}

    def product(self) -> list[dict[str, ParamValue]]:
        """Every combination of answers, backend by backend (the other backends' parameters at their defaults:
        they are not asked), the defaults first."""
        out = [self.defaults()]
        for m in self.members:
            for combo in m.product()[1:]:
                out.append({**self.defaults(), BACKEND: m.backend, **self.answers({BACKEND: m.backend, **combo})})
        return out

    def openings(self) -> list[dict[str, ParamValue]]:
        """Each other backend with its own defaults: which backend wins is the first question, and a local walk
        from vLLM's default would reach another backend only after every config of its own."""
        return [{**self.defaults(), BACKEND: m.backend} for m in self.members if m.backend != self.default_backend]


AnySpace = SearchSpace | AutoSpace


def split_config(backend: str, config: dict[str, ParamValue]) -> tuple[str, dict[str, ParamValue]]:
    """The decode backend a config runs on and the params it sets there: an ``auto`` config names its backend."""
    if backend != AUTO:
        return backend, dict(config)
    params = dict(config)
    return str(params.pop(BACKEND)), params


def unsettled(graph_support: Callable[[str], str], kv_cache_dtype: str = "auto",
              backends: tuple[str, ...] | None = None) -> AutoSpace:
    """Every backend's space, before a runner says which run here and which one vLLM picks; ``graph_support``
    (a vLLM adapter's) says how far the target vLLM graphs each backend."""
    from .knobs import BACKENDS
    from .space import load_space

    spaces = tuple(load_space(b, graph_support(b)) for b in (backends or BACKENDS))
    return AutoSpace(spaces).for_kv(kv_cache_dtype)


__all__ = ["AUTO", "BACKEND", "AnySpace", "AutoSpace", "prefixed", "split_config", "unsettled"]
