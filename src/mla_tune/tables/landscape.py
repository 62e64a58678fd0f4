"""Measured landscapes as typed records: per shape, the latency of each config and the table's verdict.

Read once from a tuning table (its entries' ``landscape``: trial medians; its verdicts: confirmed medians and
intervals) or from sweep files (every config's median over its raw samples); ``diff``, ``plots`` and ``report``
see only these records, never the files' dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import batch_spec
from ..paths import safe_component
from ..stats import round_sig
from ..types import ParamValue, Shape, freeze_params, gpu_short_name
from .entry import Interval  # one interval record for tables and the views over them

Config = tuple[tuple[str, ParamValue], ...]  # sorted (knob, value) pairs: hashable, comparable


freeze = freeze_params  # a config as its sorted (knob, value) pairs, as cases hold them


@dataclass(frozen=True)
class Source:
    """Where the numbers come from (a table's provenance or a sweep's environment)."""

    path: str
    gpu: str
    compute_capability: str
    vllm: str
    torch: str
    cuda: str
    driver: str
    runner: str
    mla_tune: str
    date: str | None

    @classmethod
    def from_provenance(cls, path: str, prov: dict[str, Any], date: str | None = None) -> Source:
        gpu = prov.get("gpu") or {}
        return cls(path=path, gpu=str(gpu.get("name", "unknown")),
                   compute_capability=str(gpu.get("compute_capability", "?")),
                   vllm=str(prov.get("vllm") or "unknown"), torch=str(prov.get("torch") or "unknown"),
                   cuda=str(prov.get("cuda") or "unknown"), driver=str(prov.get("driver") or "unknown"),
                   runner=str(prov.get("runner", "unknown")),
                   mla_tune=str(prov.get("mla_tune") or "unknown"), date=prov.get("date") or date)

    @property
    def replay(self) -> bool:
        return self.runner == "replay"

    @property
    def gpu_short(self) -> str:
        return gpu_short_name(self.gpu)

    @property
    def tag(self) -> str:
        """``H200, vLLM 0.20.0, runner vllm``: enough to tell two sources apart (``replay`` when replayed)."""
        return f"{self.gpu_short}, vLLM {self.vllm}, runner {self.runner}"

    @property
    def line(self) -> str:
        return (f"{self.gpu} (SM {self.compute_capability}), vLLM {self.vllm}, torch {self.torch}, CUDA {self.cuda}, "
                f"runner {self.runner}" + (f", {self.date}" if self.date else ""))


@dataclass(frozen=True)
class Verdict:
    """What a table decided for one entry. ``params``/``default_params`` hold one config per shape of the entry."""

    tuned: bool
    params: tuple[Config, ...]
    default_params: tuple[Config, ...]
    default_ms: float | None
    best_ms: float | None
    confirmed: Interval | None  # the deployed setting's speedup (x1.0 without an interval when the default is kept)
    candidate: tuple[tuple[Config, ...], Interval] | None  # the best config that did not clear noise
    note: str
    error: str | None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def changes(self) -> tuple[dict[str, ParamValue], ...]:
        """Per config, the knobs set away from vLLM's default (empty: the default is kept)."""
        return tuple({k: v for k, v in p if dict(d).get(k) != v} for p, d in zip(self.params, self.default_params))


@dataclass(frozen=True)
class Point:
    config: Config
    ms: float


@dataclass(frozen=True)
class ShapeLandscape:
    """One shape (or ``mix:<workload>``): each measured config's latency, and the table's verdict if any."""

    label: str
    default: Config | None
    points: tuple[Point, ...] = ()  # fastest first
    failed: tuple[tuple[Config, str], ...] = ()  # configs that did not run here, with their status
    verdict: Verdict | None = None

    @property
    def shape(self) -> Shape | None:
        return None if self.label.startswith("mix:") else batch_spec.parse(self.label)

    @property
    def default_ms(self) -> float | None:
        return next((p.ms for p in self.points if p.config == self.default), None)

    def speedup(self, config: Config) -> float | None:
        """Latency of vLLM's default over that of ``config`` (None where either was not measured)."""
        base = self.default_ms
        ms = next((p.ms for p in self.points if p.config == config), None)
        return None if base is None or ms is None else base / ms


@dataclass(frozen=True)
class Landscape:
    """Everything measured for one (source, backend, model, KV dtype): a table, or one backend of sweeps."""

    kind: str  # "table" or "sweep"
    source: Source
    backend: str
    model: str
    tp: int
    kv_cache_dtype: str
    shapes: tuple[ShapeLandscape, ...]
    knobs: tuple[str, ...] = field(default=())  # the backend's knobs, in resolve order

    @property
    def engine(self) -> str:
        kv = "" if self.kv_cache_dtype == "auto" else f" kv {self.kv_cache_dtype}"
        return f"{self.backend}, {self.model} tp{self.tp}{kv}"

    @property
    def title(self) -> str:
        return f"{self.backend} · {self.model} tp{self.tp} · {self.source.tag}"

    @property
    def stem(self) -> str:
        """A file-name stem: the GPU (``-replay`` when replayed) and the table's file name, or for sweeps
        ``H100-FLASH_ATTN_MLA-deepseek-v3-tp1-sweep``; a safe name component whatever the inputs hold."""
        gpu = self.source.gpu_short + ("-replay" if self.source.replay else "")
        if self.kind == "table":
            return safe_component(f"{gpu}-{Path(self.source.path).stem}")
        kv = "" if self.kv_cache_dtype == "auto" else f"-kv{self.kv_cache_dtype}"
        return safe_component(f"{gpu}-{self.backend}-{self.model}-tp{self.tp}{kv}-sweep")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{round_sig(x, 4):g}"


def setting_text(v: Verdict | None) -> str:
    """The deployed setting as its changes from vLLM's default (the default's own values are in the table)."""
    if v is None:
        return "-"
    if v.failed:
        return "fails here"
    if not v.params:
        return "not confirmed"
    parts = [" ".join(f"{k}={x}" for k, x in sorted(c.items())) or "default" for c in v.changes()]
    if len(parts) > 1:
        return "per shape: " + "; ".join(parts)
    return "vLLM default" if parts[0] == "default" else parts[0]


def latency_text(v: Verdict | None) -> str:
    if v is None or v.default_ms is None:
        return "-"
    if not v.tuned or v.best_ms is None:
        return _ms(v.default_ms)
    return f"{_ms(v.default_ms)} → {_ms(v.best_ms)}"
