"""What is known before a config is measured: which configs cannot win a shape, and which stored studies are the
nearest neighbours of a new one (their optima are the new study's first guesses).

Pure functions over configs, shapes and study attrs; the sampler and the study loop read the storage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import batch_spec
from ..batch_spec import SPEC_DECODE_MAX_Q
from ..errors import BatchSpecError
from ..records import StudyName
from ..types import Shape

# How far a study on another TP is from one on this TP, per doubling: the heads per GPU change the work per
# request about as much as a doubling of the batch does, and the optimum with it.
TP_WEIGHT = 1.0


def late(configs: Sequence[Mapping[str, Any]], defaults: Sequence[Mapping[str, Any]]) -> bool:
    """Is a trial of ``configs`` a long shot, to be measured only after every other config?

    Turning off the full CUDA graph that vLLM replays for a shape (the default's ``cuda_graphs`` True) runs the
    same attention kernels launched one by one: what it measures is launch overhead on top of the graphed time,
    and no serving deployment would give up graphs for it. Such configs still come, last, so an exhaustive study
    stays exhaustive.
    """
    return any(d.get("cuda_graphs") is True and c.get("cuda_graphs") is False for c, d in zip(configs, defaults))


def shape_features(shape: Shape) -> tuple[float, ...]:
    """Where a batch sits for the kernels: requests, context, new tokens per request, prefill requests (log2)."""
    n = len(shape.requests)
    mean_kv = sum(r.kv_len for r in shape.requests) / n
    prefill = sum(1 for r in shape.requests if r.q_len > SPEC_DECODE_MAX_Q)
    return (math.log2(n), math.log2(mean_kv), math.log2(shape.max_q_len), 2 * math.log2(1 + prefill))


def shape_distance(a: Shape, b: Shape) -> float:
    """L1 distance of ``shape_features``: 1 per doubling of the batch, the context or the tokens per request."""
    return sum(abs(x - y) for x, y in zip(shape_features(a), shape_features(b)))


def _same_engine(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Same backend, KV dtype and model dims (TP aside): studies whose configs mean the same thing."""
    def dims(attrs: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in (attrs.get("model") or {}).items() if k not in ("tp", "num_q_heads")}

    return (a.get("backend") == b.get("backend") and a.get("kv_cache_dtype") == b.get("kv_cache_dtype")
            and dims(a) == dims(b) and a.get("space") == b.get("space"))


def _shape_of(attrs: Mapping[str, Any]) -> Shape | None:
    shapes = attrs.get("shapes") or []
    if attrs.get("objective") != "per-shape" or len(shapes) != 1:
        return None
    try:
        return batch_spec.parse(shapes[0]["spec"])
    except (BatchSpecError, KeyError, TypeError):
        return None


def neighbours(name: str, attrs: Mapping[str, Any],
               stored: Iterable[tuple[str, Mapping[str, Any]]]) -> list[tuple[float, str]]:
    """The stored per-shape studies a new study ``name`` (with ``plan.study_attrs`` ``attrs``) can learn from,
    nearest first: same GPU, backend, KV dtype, model dims and search space, any TP. Empty for a ``mix`` study."""
    shape = _shape_of(attrs)
    if shape is None:
        return []
    here = StudyName.parse(name)
    tp = (attrs.get("model") or {}).get("tp") or 1
    out = []
    for other, a in stored:
        try:
            there = StudyName.parse(other)
        except ValueError:
            continue  # not an mla-tune study
        s = _shape_of(a)
        if other == name or s is None or there.gpu != here.gpu or not _same_engine(attrs, a):
            continue
        tp_other = (a.get("model") or {}).get("tp") or 1
        out.append((shape_distance(shape, s) + TP_WEIGHT * abs(math.log2(tp / tp_other)), other))
    return sorted(out)


__all__ = ["TP_WEIGHT", "late", "neighbours", "shape_distance", "shape_features"]
