"""``verify``: on the deployment host, re-measure each tuned setting of a table or profile against vLLM's default.

Each item (a tuned table entry, or a profile point whose value differs from vLLM's) is judged the way a study's
confirmation judges its candidates, by the same rounds loop (``study.rounds``): every round one recording of vLLM's
default, the default built again and the tuned setting, sample by sample; rounds until the default-against-itself
floor is within ±0.5% (at least ``min_rounds``, at most ``max_rounds``); the speedup is the geometric mean of the
per-round ratios with a Student-t interval at the Bonferroni level over the items (95% family-wise). An item
**holds** when its interval lies above 1 and above the floor's, is **slower** when it lies below 1 and below the
floor's, else **no gain** here. This is how a table measured on one GPU or vLLM is checked on another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import batch_spec
from ..models import get_model
from ..runners import Runner
from ..tables.entry import entries
from ..vllm_adapters import family_adapter
from ..space_auto import AUTO, split_config
from ..records import Candidate, NoiseFloor
from ..stats import familywise_level, median, round_sig
from ..study.rounds import PairedRounds, run_rounds
from ..study.verdict import judge_candidates
from ..types import Case, MLADims, freeze_params
from .profile import Profile

FLOOR_TARGET = 0.005  # as confirmation: more rounds while the default-vs-default interval is wider than ±0.5%
ROUND_STEP = 2
MAX_ROUNDS_LIMIT = 200  # --max-rounds above this is refused: a bound on device time, as study's rounds are


@dataclass(frozen=True)
class VerifyItem:
    shape: str
    default: Mapping[str, Any]
    tuned: Mapping[str, Any]
    claimed: float | None  # the speedup the table or profile recorded, where it did


@dataclass(frozen=True)
class VerifyResult:
    item: VerifyItem
    verdict: str  # "holds" | "no gain" | "slower" | "failed"
    speedup: float | None = None
    ci: tuple[float, float] | None = None
    level: float | None = None
    default_ms: float | None = None
    tuned_ms: float | None = None
    message: str = ""
    floor: NoiseFloor | None = None  # the default against its second build, in the same rounds
    rounds: int = 0
    gpu_s: float = 0.0  # device seconds the item's recordings timed


def table_items(table: Mapping[str, Any]) -> list[VerifyItem]:
    """The tuned per-shape entries of a table."""
    return [VerifyItem(e.shape, dict(e.default_params[0]), dict(e.params[0]),
                       e.confirmed.speedup if e.confirmed is not None else None)
            for e in entries(table) if e.tuned and e.shape is not None]


def profile_items(profile: Profile) -> list[VerifyItem]:
    """One item per measured shape behind each per-batch point (and the at-build values) that changes vLLM's."""
    space = family_adapter(profile.match.vllm).search_space(profile.match.backend, profile.match.kv_cache_dtype)
    items = []
    for rule in profile.per_batch:
        for point in rule.points:
            for spec in (point.shape or "").split("+"):
                if not spec:
                    continue
                shape = batch_spec.parse(spec)
                default = space.default_config(shape)
                # what the deployment runs on this shape: the global and at-build values too, resolved as the runner
                # resolves them (a value that stops mattering takes its idle value)
                wanted = {**dict(profile.global_), **dict(profile.at_build), rule.knob: point.value}
                tuned = space.resolve(shape, lambda p, w=wanted: w.get(p.name, p.default))
                if tuned != default and rule.knob in default:
                    items.append(VerifyItem(spec, default, tuned, None))
    return items


def profile_dims(profile: Profile) -> MLADims:
    prov = profile.provenance
    if "model" not in prov or "tp" not in prov:
        from ..errors import UsageError

        raise UsageError("the profile's provenance names no model and tp: re-create it with `mla-tune deploy`")
    return get_model(str(prov["model"]), int(prov["tp"]))


def _case(backend: str, params: Mapping[str, Any], shape: Any, dims: MLADims, kv_cache_dtype: str) -> Case:
    on, own = split_config(backend, dict(params))
    return Case(on, shape, dims, freeze_params(own), kv_cache_dtype)


def table_dims(table: Mapping[str, Any]) -> MLADims:
    return get_model(table["model"]["model"], int(table["model"]["tp"]))


def item_backends(backend: str, items: list[VerifyItem]) -> list[str]:
    """The decode backends verifying ``items`` runs: the table's, or (``auto``) each config's own."""
    return sorted({split_config(backend, dict(c))[0] for i in items for c in (i.default, i.tuned)}) or \
        ([backend] if backend != AUTO else [])


def verify(items: list[VerifyItem], runner: Runner, backend: str, dims: MLADims, kv_cache_dtype: str = "auto",
           min_rounds: int = 4, max_rounds: int = 24, progress: Callable[[str], None] | None = None
           ) -> list[VerifyResult]:
    level = familywise_level(max(1, len(items)))
    out = []
    for n, item in enumerate(items, 1):
        shape = batch_spec.parse(item.shape)
        # an auto table's tuned config may run on another backend than vLLM's default: each on its own
        default, tuned = (_case(backend, p, shape, dims, kv_cache_dtype) for p in (item.default, item.tuned))
        pr = PairedRounds([default], [[tuned]], [1.0])

        def said(done: int, half: float | None, n: int = n) -> None:
            if progress:
                floor = f", noise floor ±{100 * half:.2f}%" if half is not None else ""
                progress(f"verifying {n}/{len(items)}: {item.shape}, round {done}{floor}")

        rounds = run_rounds(pr, runner, min_rounds, max_rounds, ROUND_STEP, FLOOR_TARGET, level, on_round=said)
        gpu_s = round_sig(pr.gpu_s, 4)
        arm = pr.arms[0]
        failure = pr.failed or arm.failed
        if failure:
            out.append(VerifyResult(item, "failed", message=failure, rounds=pr.done, gpu_s=gpu_s))
            continue
        cand = Candidate(0, (), "ok", rounds=arm.rounds())
        (judged,), _, floor = judge_candidates([cand], pr.floor.rounds(), family=len(items))
        ci = judged.ci or (0.0, float("inf"))
        high = floor.ci[1] if floor is not None else 1.0
        low = floor.ci[0] if floor is not None else 1.0
        verdict = "holds" if ci[0] > max(1.0, high) else "slower" if ci[1] < min(1.0, low) else "no gain"
        out.append(VerifyResult(item, verdict, judged.speedup, ci, judged.ci_level,
                                round_sig(median(arm.default), 4), round_sig(median(arm.best), 4),
                                message=arm.note or "", floor=floor, rounds=rounds, gpu_s=gpu_s))
    return out
