"""Search spaces (``search_spaces/<BACKEND>.yaml``): validation, per-shape relevance, expansion, defaults.

The parameters are not independent. Which of them matter depends on the batch shape and on each other, the
way vLLM's own code paths do: the reorder threshold splits a batch into a decode part and a prefill part; the
prefill backend only matters when there is a prefill part, the split knobs only when there is a decode part;
vLLM replays full CUDA graphs only for uniform decode batches of at most ``CUDAGRAPH_MAX_TOKENS`` tokens; and
the flash-attn split cap only applies under such a graph. ``resolve`` walks the parameters in that order and
fixes the ones that do not matter, so every config it returns is one that serving really runs, and two
configs that run the same kernels compare equal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import _yaml
from .data import search_spaces_dir
from .errors import DataFileError, UnknownNameError
from .knobs import BACKENDS, KNOBS, PREFILL_BACKENDS, Situation, knob, knob_names, knobs_for  # noqa: F401 - re-exported
from .types import ParamValue, Shape

# The token count up to which vLLM captures full CUDA graphs by default (max_cudagraph_capture_size): batches
# are measured graphed only where a default deployment would replay them from a graph.
CUDAGRAPH_MAX_TOKENS = 512
# vLLM's AttentionCGSupport levels, weakest first.
CUDA_GRAPH_SUPPORT = ("never", "uniform_single_token_decode", "uniform_batch", "always")
_TYPES = ("int", "categorical", "bool")


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: ParamValue
    choices: tuple[ParamValue, ...] | None = None
    low: int | None = None
    high: int | None = None
    log: bool = False
    step: int = 1
    description: str = ""

    def values(self) -> tuple[ParamValue, ...]:
        """Every value, in order: the grid an exhaustive search walks."""
        if self.type == "bool":
            return (False, True)
        if self.choices is not None:
            return self.choices
        assert self.low is not None and self.high is not None
        return tuple(range(self.low, self.high + 1, self.step))

    def contains(self, value: Any) -> bool:
        if self.type == "bool":
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, int) and self.low <= value <= self.high and (value - self.low) % self.step == 0


class ParameterLookup:
    """Lookup by name over a space's ``parameters`` (one backend's, or ``--backend auto``'s prefixed union)."""

    parameters: tuple[Parameter, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def __getitem__(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.parameters)


@dataclass(frozen=True)
class SearchSpace(ParameterLookup):
    backend: str
    description: str
    # How far the target vLLM replays this backend in full CUDA graphs: a fact of its family (the vLLM adapter's
    # ``BackendFacts.cuda_graph_support``), given to ``load_space``, never written in the file.
    cuda_graph_support: str
    parameters: tuple[Parameter, ...]
    path: str = ""
    # The KV-cache dtype the configs run with ("auto" = the model's, or "fp8"): some knobs matter only with one.
    kv_cache_dtype: str = "auto"
    # The file's ``cuda_graphs`` declaration, kept while the family graphs nothing of this backend (it is then no
    # parameter, so configs stay as they were), so that ``under_graphs`` can bring it back for one that does.
    graphs_declared: Parameter | None = field(default=None, compare=False, repr=False)

    def under_graphs(self, support: str) -> SearchSpace:
        """This space for a vLLM family that replays the backend in full CUDA graphs as far as ``support`` says:
        ``cuda_graphs`` is searched where the family graphs some batch of it, and is no parameter where it never
        does (TRITON_MLA on 0.20-0.21, in graphs from 0.22)."""
        if support not in CUDA_GRAPH_SUPPORT:
            raise ValueError(f"unknown CUDA graph support {support!r}; known: {', '.join(CUDA_GRAPH_SUPPORT)}")
        declared = self["cuda_graphs"] if "cuda_graphs" in self else self.graphs_declared
        params = tuple(p for p in self.parameters if p.name != "cuda_graphs")
        if support != "never" and declared is not None:
            params = _in_knob_order((*params, declared))
        return replace(self, cuda_graph_support=support, parameters=params, graphs_declared=declared)

    def for_kv(self, kv_cache_dtype: str) -> SearchSpace:
        """This space for a KV cache of ``kv_cache_dtype`` ("fp8"/"fp8_e4m3" count as fp8, the rest as "auto")."""
        return replace(self, kv_cache_dtype="fp8" if str(kv_cache_dtype).startswith("fp8") else "auto")


    def defaults(self) -> dict[str, ParamValue]:
        """vLLM's own settings: the baseline every tuned config is compared against."""
        return {p.name: p.default for p in self.parameters}

    def threshold(self, params: dict[str, ParamValue]) -> int:
        """The reorder threshold a config runs with (1, vLLM's fixed value, where the backend has no knob)."""
        value = params.get("reorder_batch_threshold", self["reorder_batch_threshold"].default
                           if "reorder_batch_threshold" in self else 1)
        return int(value)

    def graphable(self, shape: Shape, threshold: int) -> bool:
        """Would vLLM replay a full CUDA graph for this batch? Uniform decode, small enough, supported."""
        if any(r.q_len > threshold for r in shape.requests) or shape.num_tokens > CUDAGRAPH_MAX_TOKENS:
            return False
        q_lens = {r.q_len for r in shape.requests}
        level = CUDA_GRAPH_SUPPORT.index(self.cuda_graph_support)
        if level >= CUDA_GRAPH_SUPPORT.index("uniform_batch"):
            return len(q_lens) == 1
        if level == CUDA_GRAPH_SUPPORT.index("uniform_single_token_decode"):
            return q_lens == {1}
        return False

    def resolve(self, shape: Shape, choose: Callable[[Parameter], ParamValue]) -> dict[str, ParamValue]:
        """Walk the parameters in dependency order, asking ``choose`` only for those that matter here.

        Returns the full config that is run. Parameters that do not matter for ``shape`` get the value
        that serving runs with (``cuda_graphs`` False where vLLM would not graph the batch, else the default),
        and the threshold is replaced by the representative of its class (see ``_threshold_class``).
        """
        config: dict[str, ParamValue] = {}
        for k in knobs_for(self.backend):
            if k.name in self:
                p = self[k.name]
                config[k.name] = k.value_for(Situation(shape, config, self), lambda p=p: choose(p))
        return config

    def default_config(self, shape: Shape) -> dict[str, ParamValue]:
        """The baseline as it runs for ``shape``."""
        return self.resolve(shape, lambda p: p.default)

    def expand(self, shape: Shape) -> list[dict[str, ParamValue]]:
        """Every distinct config that runs differently for ``shape``; the baseline first."""
        return distinct_configs([self.default_config(shape), *self._walk(shape)])

    def _walk(self, shape: Shape) -> Iterator[dict[str, ParamValue]]:
        # Enumerate by replaying `resolve` with every combination of answers to the questions it asks.
        stack: list[tuple[ParamValue, ...]] = [()]
        while stack:
            prefix = stack.pop()
            asked: list[Parameter] = []

            def choose(p: Parameter, prefix=prefix, asked=asked) -> ParamValue:
                asked.append(p)
                return prefix[len(asked) - 1] if len(asked) <= len(prefix) else p.values()[0]

            config = self.resolve(shape, choose)
            if len(asked) <= len(prefix):
                yield config
                continue
            nxt = asked[len(prefix)]
            stack.extend(prefix + (v,) for v in reversed(nxt.values()))

    def answers(self, config: dict[str, ParamValue]) -> dict[str, ParamValue]:
        """The answers (parameter name -> value) that make ``resolve`` run ``config``: here its own values."""
        return dict(config)

    def product(self) -> list[dict[str, ParamValue]]:
        """Every combination of answers, the defaults first (what a ``mix`` study's exhaustive walk starts from)."""
        combos: list[dict[str, ParamValue]] = [self.defaults()]
        for p in self.parameters:
            combos = [{**c, p.name: v} for c in combos for v in p.values()]
        return [self.defaults()] + combos

    def openings(self) -> list[dict[str, ParamValue]]:
        """Answers worth measuring first besides vLLM's default: none within one backend (see ``AutoSpace``)."""
        return []

    def only(self, names: Iterable[str]) -> SearchSpace:
        """The space with just the parameters ``names`` (e.g. the knobs a table measured: serving prices values
        within it, and leaves vLLM's default for the rest), its graph support unchanged."""
        keep = set(names)
        return replace(self, parameters=tuple(p for p in self.parameters if p.name in keep))

    def restrict(self, name: str, allowed: Iterable[ParamValue], why: str = "") -> SearchSpace:
        """The space without the values of ``name`` outside ``allowed`` (e.g. prefill kernels this GPU lacks).

        The default always stays: it is the baseline, and vLLM runs it whatever the GPU.
        """
        if name not in self:
            return self
        p = self[name]
        keep = tuple(v for v in p.values() if v in set(allowed) or v == p.default)
        params = tuple(replace(q, type="categorical" if q.type != "bool" else q.type, choices=keep,
                               low=None, high=None) if q.name == name else q for q in self.parameters)
        return replace(self, parameters=params)



def config_key(config: dict[str, ParamValue]) -> tuple:
    return tuple(sorted(config.items()))


def distinct_configs(configs: Iterable[dict[str, ParamValue]]) -> list[dict[str, ParamValue]]:
    """``configs`` without repeats (equal ``config_key``), each at its first place."""
    seen: dict[tuple, dict[str, ParamValue]] = {}
    for config in configs:
        seen.setdefault(config_key(config), config)
    return list(seen.values())


def format_config(config: dict[str, ParamValue]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(config.items())) or "(defaults)"


def _parameter(path: Path, backend: str, name: str, raw: Any) -> Parameter:
    where = f"parameters.{name}"
    if name not in knob_names():
        raise DataFileError(str(path), where, f"unknown parameter; known: {', '.join(knob_names())}")
    k = knob(name)
    if backend not in k.backends:
        raise DataFileError(str(path), where, f"does not apply to {backend}; it applies to {', '.join(k.backends)}")
    raw = _yaml.check_keys(path, where, raw, ["type"], ["default", "choices", "low", "high", "log", "step",
                                                        "description"])
    ptype = raw["type"]
    if ptype not in _TYPES:
        raise DataFileError(str(path), f"{where}.type", f"is {ptype!r}; allowed: {', '.join(_TYPES)}")
    if ptype != k.type and not (k.type == "categorical" and ptype == "int" and not k.auto):
        raise DataFileError(str(path), f"{where}.type", f"is {ptype!r}; {name} is declared {k.type!r}")
    # vLLM's default is the knob's (the baseline must be what vLLM runs); a file may restate it, not change it.
    vllm_default = k.default(backend)
    if "default" in raw and raw["default"] != vllm_default:
        raise DataFileError(str(path), f"{where}.default", f"is {raw['default']!r}, but vLLM's default for "
                            f"{backend} is {vllm_default!r} (knob {name}); the baseline cannot be changed here")
    choices = raw.get("choices")
    if choices is not None:
        _yaml.expect(path, f"{where}.choices", choices, list, "a list")
        if not choices or len(set(map(repr, choices))) != len(choices):
            raise DataFileError(str(path), f"{where}.choices", "must be a non-empty list without repeats")
        choices = tuple(choices)
    param = Parameter(name, ptype, vllm_default, choices, raw.get("low"), raw.get("high"),
                      bool(raw.get("log", False)), raw.get("step", 1), str(raw.get("description", "")))
    _check_parameter(path, where, param)
    bad = [v for v in param.values() if not k.accepts(v)]
    if bad:
        raise DataFileError(str(path), f"{where}.choices", f"{bad[0]!r} is not a value of {name}; "
                            f"allowed: {k.allowed()}")
    return param


def _check_parameter(path: Path, where: str, p: Parameter) -> None:
    if p.type == "bool":
        if p.choices is not None or p.low is not None or p.high is not None:
            raise DataFileError(str(path), where, "a bool takes no choices or range")
    elif p.type == "categorical":
        if p.choices is None:
            raise DataFileError(str(path), f"{where}.choices", "a categorical needs choices")
    else:  # int
        if (p.choices is None) == (p.low is None or p.high is None):
            raise DataFileError(str(path), where, "an int needs either choices or low and high")
        if p.choices is not None:
            for c in p.choices:
                _yaml.expect(path, f"{where}.choices", c, int, "integers")
        else:
            _yaml.expect(path, f"{where}.low", p.low, int, "an integer")
            _yaml.expect(path, f"{where}.high", p.high, int, "an integer")
            _yaml.expect(path, f"{where}.step", p.step, int, "an integer")
            if p.low > p.high or p.step < 1 or (p.log and p.low < 1):
                raise DataFileError(str(path), where, f"bad range low={p.low} high={p.high} step={p.step}"
                                    + (" (log needs low >= 1)" if p.log else ""))
            if p.log and p.step != 1:
                raise DataFileError(str(path), f"{where}.step", "a log range takes no step")
    if not p.contains(p.default):
        raise DataFileError(str(path), f"{where}.default", f"{p.default!r} is outside the parameter's values")


def _in_knob_order(params: Iterable[Parameter]) -> tuple[Parameter, ...]:
    """Parameters in the order their knobs are declared: the order ``resolve`` walks them in."""
    by_name = {p.name: p for p in params}
    return tuple(by_name[k.name] for k in KNOBS if k.name in by_name)


def load_space_file(path: Path, graphs: str) -> SearchSpace:
    """The space a file declares, for a vLLM whose graph support for its backend is ``graphs`` (see
    ``SearchSpace.under_graphs``; the vLLM adapter's ``search_space`` gives it)."""
    data = _yaml.load(path)
    if isinstance(data, dict) and "cuda_graph_support" in data:
        raise DataFileError(str(path), "cuda_graph_support", "how far vLLM graphs a backend is a fact of each vLLM "
                            "family (its adapter), no longer a line of a search space: remove it")
    data = _yaml.check_keys(path, "", data, ["schema_version", "backend", "parameters"], ["description"])
    backend = data["backend"]
    if backend not in BACKENDS:
        raise DataFileError(str(path), "backend", f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    raw_params = _yaml.expect(path, "parameters", data["parameters"] or {}, dict, "a mapping")
    params = {name: _parameter(path, backend, name, raw) for name, raw in raw_params.items()}
    space = SearchSpace(backend, str(data.get("description", "")), "never", _in_knob_order(params.values()),
                        str(path))
    return space.under_graphs(graphs)


def load_space(backend: str, graphs: str, directory: Path | None = None) -> SearchSpace:
    """``search_spaces/<backend>.yaml`` for a vLLM whose graph support for ``backend`` is ``graphs``."""
    directory = directory or search_spaces_dir()
    if backend not in BACKENDS:
        raise UnknownNameError("backend", backend, BACKENDS)
    path = directory / f"{backend}.yaml"
    space = load_space_file(path, graphs)
    if space.backend != backend:
        raise DataFileError(str(path), "backend", f"says {space.backend}, the file name says {backend}")
    return space
