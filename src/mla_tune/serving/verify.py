"""``verify``: on the deployment host, re-measure each tuned setting of a table or profile against vLLM's default.

Each item (a tuned table entry, or a profile point whose value differs from vLLM's) is measured with the runner
in paired rounds (default then tuned, then tuned then default, ...), so drift hits both alike; the speedup is the
geometric mean of the per-round ratios with a Student-t interval at the Bonferroni level over the items (95%
family-wise, as confirmations are). An item **holds** when its interval lies above 1, is **slower** when it lies
below 1, else **no gain** here. This is how a table measured on one GPU or vLLM is checked on another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import batch_spec
from ..models import get_model
from ..runners import Runner
from ..space import load_space
from ..space_auto import AUTO, split_config
from ..stats import familywise_level, median, paired_speedup, round_sig
from ..types import Case, MLADims, freeze_params
from .profile import Profile


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


def table_items(table: Mapping[str, Any]) -> list[VerifyItem]:
    """The tuned per-shape entries of a table."""
    return [VerifyItem(e["shape"], dict(e["default_params"]), dict(e["params"]), e.get("speedup"))
            for e in table["entries"] if e.get("tuned") and "shape" in e and isinstance(e.get("params"), dict)]


def profile_items(profile: Profile) -> list[VerifyItem]:
    """One item per measured shape behind each per-batch point (and the at-build values) that changes vLLM's."""
    space = load_space(profile.match.backend).for_kv(profile.match.kv_cache_dtype)
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
           rounds: int = 6, progress: Callable[[str], None] | None = None) -> list[VerifyResult]:
    level = familywise_level(max(1, len(items)))
    out = []
    for n, item in enumerate(items, 1):
        shape = batch_spec.parse(item.shape)
        # an auto table's tuned config may run on another backend than vLLM's default: each on its own
        cases = {k: _case(backend, p, shape, dims, kv_cache_dtype)
                 for k, p in (("default", item.default), ("tuned", item.tuned))}
        rows: dict[str, list[float]] = {"default": [], "tuned": []}
        failure = ""
        for r in range(rounds):
            for key in (("default", "tuned") if r % 2 == 0 else ("tuned", "default")):
                m = runner.measure(cases[key])
                if not m.ok:
                    failure = f"{key} config: {m.status.value}: {m.message}"
                    break
                rows[key].append(m.median_ms)
            if failure:
                break
        if progress:
            progress(f"verified {n}/{len(items)}: {item.shape}")
        if failure:
            out.append(VerifyResult(item, "failed", message=failure))
            continue
        ps = paired_speedup(rows["default"], rows["tuned"], level)
        verdict = "holds" if ps.ci_low > 1 else "slower" if ps.ci_high < 1 else "no gain"
        out.append(VerifyResult(item, verdict, round_sig(ps.speedup, 4),
                                (round_sig(ps.ci_low, 4), round_sig(ps.ci_high, 4)), round_sig(level, 4),
                                round_sig(median(rows["default"]), 4), round_sig(median(rows["tuned"]), 4)))
    return out
