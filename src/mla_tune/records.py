"""Typed records of what mla-tune stores in Optuna: read and written here, never split or joined elsewhere.

Each record reads its stored form (``from_attrs``, ``from_trial``) and writes it back (``to_attrs``) key for key:
stored files written before a field existed still load, and keys a record does not know (an older schema's
``ci95``) are kept in ``extra`` and written back, so reading and writing never changes what is stored. Optional
fields are None where the stored form has no such key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .stats import round_sig

if TYPE_CHECKING:
    from .types import Measurement, PairStat

ATTRS_KEY = "mla_tune"  # study user attr: what the study measures and where (``plan.study_attrs``)
KEY_ATTR = "key"  # trial user attr: the configs a trial runs, as canonical JSON (set before measuring)
CONFIRM_KEY = "confirmation"  # study user attr: the paired confirmation (``Confirmation``)


@dataclass(frozen=True)
class StudyName:
    """An Optuna study name, ``H100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k``: it reads well in optuna-dashboard's
    study list, and studies of different GPUs, models or backends never share one."""

    gpu: str  # Environment.fingerprint: H100, or H100-replay for replayed measurements
    model: str  # the model's label with its TP and a non-default KV-cache dtype: deepseek-v3-tp1, ...-tp1-kvfp8
    backend: str  # decode backend: FLASH_ATTN_MLA
    label: str  # the shape spec (per-shape studies) or mix:<workload>

    @classmethod
    def parse(cls, text: str) -> StudyName:
        """The record of a stored name. The GPU comes first and the backend and label last, so a model label that
        holds "/" still parses."""
        parts = text.split("/")
        if len(parts) < 4 or not all(parts):
            raise ValueError(f"not an mla-tune study name: {text!r} (want GPU/MODEL-tpN/BACKEND/SHAPE)")
        return cls(parts[0], "/".join(parts[1:-2]), parts[-2], parts[-1])

    def __str__(self) -> str:
        return f"{self.gpu}/{self.model}/{self.backend}/{self.label}"


def _plain(x: Any) -> Any:
    """Stored (JSON) form: mappings as dicts, sequences as lists, copied so that no caller shares a record's."""
    if isinstance(x, Mapping):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _tuple(x: Sequence[Any] | None) -> tuple[Any, ...] | None:
    return None if x is None else tuple(x)


def _emit(pairs: Sequence[tuple[str, Any]], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The stored dict: the pairs whose value is not None, in order, then the unknown keys kept."""
    out = {k: _plain(v) for k, v in pairs if v is not None}
    out.update(_plain(extra))
    return out


def _rest(attrs: Mapping[str, Any], known: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if k not in known}


_SHAPE_KEYS = ("status", "config", "median_ms", "spread", "n_samples", "samples_ms", "message", "rel_err", "details",
               "paired")


@dataclass(frozen=True)
class Paired:
    """A measurement's pair with vLLM's default in the same recording (``types.PairStat`` as stored): the default's
    median there, the speedup over it (>1: faster), its interval over the recording's blocks, and how many blocks
    (0: two separate recordings, no interval)."""

    reference_ms: float
    speedup: float
    ci: tuple[float, float] | None = None
    blocks: int = 0

    @classmethod
    def of(cls, pair: PairStat) -> Paired:
        ci = None if pair.ci is None else (round_sig(pair.ci[0], 5), round_sig(pair.ci[1], 5))
        return cls(round_sig(pair.reference_ms), round_sig(pair.speedup, 5), ci, pair.blocks)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Paired:
        return cls(attrs["reference_ms"], attrs["speedup"], _tuple(attrs.get("ci")), attrs.get("blocks", 0))

    def to_attrs(self) -> dict[str, Any]:
        return _emit([("reference_ms", self.reference_ms), ("speedup", self.speedup), ("ci", self.ci),
                      ("blocks", self.blocks)], {})


@dataclass(frozen=True)
class ShapeResult:
    """One shape's measurement as a trial stores it: status, the config run, and an ok one's statistics."""

    status: str
    config: Mapping[str, Any] | None  # None only in a partial record
    median_ms: float | None = None
    spread: float | None = None
    n_samples: int | None = None
    samples_ms: tuple[float, ...] | None = None
    message: str | None = None
    rel_err: float | None = None
    details: Mapping[str, Any] | None = None
    paired: Paired | None = None  # against vLLM's default in the same recording (trials since paired recording)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_measurement(cls, m: Measurement, config: Mapping[str, Any], pair: PairStat | None = None
                         ) -> ShapeResult:
        """Rounded to stable digits (files people diff); a failure keeps its reason and no numbers."""
        rel_err = round_sig(m.rel_err, 3) if m.rel_err is not None else None
        details = dict(m.details) or None
        if not m.ok:
            return cls(m.status.value, dict(config), message=m.message, rel_err=rel_err, details=details)
        return cls(m.status.value, dict(config), round_sig(m.median_ms), round_sig(m.spread, 4), len(m.samples_ms),
                   tuple(round_sig(x) for x in m.samples_ms), rel_err=rel_err, details=details,
                   paired=Paired.of(pair) if pair is not None else None)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> ShapeResult:
        a = attrs
        paired = a.get("paired")
        return cls(a.get("status"), a.get("config"), a.get("median_ms"), a.get("spread"), a.get("n_samples"),
                   _tuple(a.get("samples_ms")), a.get("message"), a.get("rel_err"), a.get("details"),
                   Paired.from_attrs(paired) if isinstance(paired, Mapping) else None, _rest(a, _SHAPE_KEYS))

    def to_attrs(self) -> dict[str, Any]:
        pairs = [(k, getattr(self, k)) for k in _SHAPE_KEYS if k != "paired"]
        pairs.append(("paired", self.paired.to_attrs() if self.paired is not None else None))
        return _emit(pairs, self.extra)


_TRIAL_KEYS = ("key", "role", "duplicate_of", "status", "message", "provenance", "shapes", "speedup_vs_default")


@dataclass(frozen=True)
class TrialResult:
    """A trial's stored result (its user attrs), with the trial's number and value where read from a trial.

    A one-shape trial stores its ``measurement`` flattened into the trial's attrs (``config``, ``median_ms``, ...,
    its status being the trial's); a failed or multi-shape trial stores ``shapes`` by spec instead. Every field
    may be None: a trial's attrs are written in steps (its key before measuring, its speedup last), and
    ``to_attrs`` of a partial record writes just that step.
    """

    key: str | None = None  # the configs it runs, canonical JSON (KEY_ATTR)
    role: str | None = None  # "baseline" for vLLM's defaults
    duplicate_of: int | None = None  # a reused trial: the number of the trial that measured its configs
    status: str | None = None  # "ok", or why it failed; None: stopped before measuring
    message: str | None = None  # a failure's reason, "spec: why"
    provenance: Mapping[str, Any] | None = None  # Environment.as_dict() of the runner
    measurement: ShapeResult | None = None
    shapes: Mapping[str, ShapeResult] | None = None
    speedup_vs_default: float | None = None  # trial medians, not paired: for progress and the dashboard
    extra: Mapping[str, Any] = field(default_factory=dict)
    number: int | None = None  # the trial's, not stored in attrs
    value: float | None = None  # the trial's value (ms); None unless it completed

    @classmethod
    def from_trial(cls, t: Any) -> TrialResult:
        """From an Optuna ``FrozenTrial`` (or anything with ``user_attrs``, ``number`` and ``value``)."""
        return cls.from_attrs(t.user_attrs, number=t.number, value=t.value)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], *, number: int | None = None,
                   value: float | None = None) -> TrialResult:
        a = attrs
        flat = {k: a[k] for k in _SHAPE_KEYS if k in a and k not in ("status", "message")}
        measurement = ShapeResult.from_attrs({"status": a.get("status"), **flat}) if flat else None
        shapes = a.get("shapes")
        return cls(a.get("key"), a.get("role"), a.get("duplicate_of"), a.get("status"), a.get("message"),
                   a.get("provenance"), measurement,
                   None if shapes is None else {spec: ShapeResult.from_attrs(s) for spec, s in shapes.items()},
                   a.get("speedup_vs_default"), _rest(a, _TRIAL_KEYS + (tuple(flat) if measurement else ())), number,
                   value)

    def to_attrs(self) -> dict[str, Any]:
        flat = {k: v for k, v in self.measurement.to_attrs().items() if k not in ("status", "message")} \
            if self.measurement is not None else {}
        shapes = None if self.shapes is None else {spec: s.to_attrs() for spec, s in self.shapes.items()}
        out = _emit([(k, getattr(self, k)) for k in _TRIAL_KEYS[:6]], {})
        out.update(flat)
        out.update(_emit([("shapes", shapes), ("speedup_vs_default", self.speedup_vs_default)], self.extra))
        return out

    @property
    def fresh(self) -> bool:
        """Measured by this trial, not reused from an earlier one with the same configs."""
        return self.duplicate_of is None

    def configs(self, specs: Sequence[str]) -> list[dict[str, Any]]:
        """The configs it ran, one per shape of ``specs`` (one config for a one-shape trial)."""
        if self.shapes is not None:
            return [dict(self.shapes[s].config) for s in specs]
        if self.measurement is None or self.measurement.config is None:
            raise ValueError(f"trial {self.number} stores no config")
        return [dict(self.measurement.config)]


@dataclass(frozen=True)
class Rounds:
    """Per-round latencies (ms) of a paired confirmation: vLLM's default, the candidate, and (since the noise
    floor) the default's second, separately built measurement of the same round."""

    default: tuple[float, ...]
    best: tuple[float, ...]
    again: tuple[float, ...] | None = None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Rounds:
        return cls(tuple(attrs["default"]), tuple(attrs["best"]), _tuple(attrs.get("again")))

    def to_attrs(self) -> dict[str, Any]:
        return _emit([("default", self.default), ("best", self.best), ("again", self.again)], {})


_CANDIDATE_KEYS = ("trial", "configs", "status", "message", "default_ms", "best_ms", "samples", "round_ms", "speedup",
                   "ci", "ci_level", "significant")


@dataclass(frozen=True)
class Candidate:
    """One config confirmed against vLLM's default: its rounds, and the verdict ``verdict.judge_candidates`` drew
    from them (``speedup``, ``ci``, ``ci_level``, ``significant``; recomputed from the rounds whenever it is read)."""

    trial: int
    configs: tuple[Mapping[str, Any], ...]
    status: str  # "ok" or "failed"
    message: str | None = None
    default_ms: float | None = None  # medians over the rounds
    best_ms: float | None = None
    samples: Mapping[str, int] | None = None  # raw samples behind them: {"default": n, "best": n}
    rounds: Rounds | None = None
    speedup: float | None = None
    ci: tuple[float, float] | None = None
    ci_level: float | None = None
    significant: bool | None = None  # its interval clears 1 and the study's noise floor
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Candidate:
        a = attrs
        return cls(a["trial"], tuple(a["configs"]), a["status"], a.get("message"), a.get("default_ms"),
                   a.get("best_ms"), a.get("samples"), Rounds.from_attrs(a["round_ms"]) if a.get("round_ms") else None,
                   a.get("speedup"), _tuple(a.get("ci")), a.get("ci_level"), a.get("significant"),
                   _rest(a, _CANDIDATE_KEYS))

    def to_attrs(self) -> dict[str, Any]:
        pairs = [(k, getattr(self, k)) for k in _CANDIDATE_KEYS if k != "round_ms"]
        pairs.insert(7, ("round_ms", self.rounds.to_attrs() if self.rounds is not None else None))
        return _emit(pairs, self.extra)


@dataclass(frozen=True)
class NoiseFloor:
    """vLLM's default against itself: each round measures the default twice, separately built, and the interval
    of those ratios (the candidates' statistic) is how far "faster" noise alone reaches in this study."""

    rounds: int
    speedup: float
    ci: tuple[float, float]
    ci_level: float

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> NoiseFloor:
        return cls(attrs["rounds"], attrs["speedup"], tuple(attrs["ci"]), attrs["ci_level"])

    def to_attrs(self) -> dict[str, Any]:
        return _emit([("rounds", self.rounds), ("speedup", self.speedup), ("ci", self.ci),
                      ("ci_level", self.ci_level)], {})


_CONFIRMATION_KEYS = ("trials", "rounds", "date", "runner", "default", "candidates", "winner", "floor", "floor_rounds",
                      "gpu_s", "pairing")


@dataclass(frozen=True)
class Confirmation:
    """A study's paired confirmation (study user attr ``confirmation``): what it measured and what it found.

    ``floor`` is None in confirmations stored before the noise floor was measured. ``floor_rounds`` (since paired
    recordings) holds the default against its second build per round, recorded with the candidates; older
    confirmations kept those rounds in each candidate's ``again``. ``gpu_s``: device seconds its recordings timed."""

    trials: int  # distinct configs measured when it ran: it speaks for that state of the study
    rounds: int
    date: str
    runner: str
    default_configs: tuple[Mapping[str, Any], ...]
    candidates: tuple[Candidate, ...]
    winner: int | None  # index into candidates
    floor: NoiseFloor | None = None
    floor_rounds: Rounds | None = None
    gpu_s: float | None = None
    pairing: str | None = None  # how the rounds' recordings paired the arms ("interleaved", "replayed pairs", ...)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of_study(cls, study_attrs: Mapping[str, Any]) -> Confirmation | None:
        """The confirmation among a study's user attrs, or None (not confirmed yet)."""
        stored = study_attrs.get(CONFIRM_KEY)
        return cls.from_attrs(stored) if stored else None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Confirmation:
        a = attrs
        return cls(a["trials"], a["rounds"], a["date"], a["runner"], tuple(a["default"]["configs"]),
                   tuple(Candidate.from_attrs(c) for c in a["candidates"]), a["winner"],
                   NoiseFloor.from_attrs(a["floor"]) if a.get("floor") is not None else None,
                   Rounds.from_attrs(a["floor_rounds"]) if a.get("floor_rounds") else None, a.get("gpu_s"),
                   a.get("pairing"), _rest(a, _CONFIRMATION_KEYS))

    def to_attrs(self) -> dict[str, Any]:
        out = _emit([("trials", self.trials), ("rounds", self.rounds), ("date", self.date), ("runner", self.runner),
                     ("default", {"configs": self.default_configs}),
                     ("candidates", [c.to_attrs() for c in self.candidates])], {})
        out["winner"] = self.winner  # None is stored too: "no winner"
        out.update(_emit([("floor", self.floor.to_attrs() if self.floor is not None else None),
                          ("floor_rounds", self.floor_rounds.to_attrs() if self.floor_rounds is not None else None),
                          ("gpu_s", self.gpu_s), ("pairing", self.pairing)], self.extra))
        return out


__all__ = ["ATTRS_KEY", "CONFIRM_KEY", "KEY_ATTR", "Candidate", "Confirmation", "NoiseFloor", "Paired", "Rounds",
           "ShapeResult",
           "StudyName", "TrialResult"]
