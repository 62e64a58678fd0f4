"""The batch-spec grammar of vLLM's attention benchmarks, as pure functions.

A spec is ``_``-separated segments ``[count]q<q_len>[k][s<kv_len>[k|t]]``: ``64q1s4k`` is 64 requests of one
new token over 4096 tokens of context, ``q2k`` one prefill of 2048 tokens (``kv_len`` defaults to ``q_len``),
``2q2k_32q1s1k`` a mixed batch. ``k`` multiplies by 1024. ``parse(format(shape)) == shape`` for every shape.

A context written as a bare number under ``MIN_CONTEXT`` (``64q1s4``) is refused as a forgotten ``k``: one that
short is written with ``t`` for tokens (``q1s6t``: one new token over 6 tokens of context), and ``format`` writes
it so. vLLM's benchmark grammar has no ``t``; every spec of mla-tune's workloads has a context of 1k or more.
"""

from __future__ import annotations

import re
from itertools import groupby

from .errors import BatchSpecError
from .types import Request, Shape

_SEGMENT = re.compile(r"(\d*)q(\d+)(k?)(?:s(\d+)(k|t)?)?")
SPEC_DECODE_MAX_Q = 16  # extends with at most this many new tokens are speculative-decode verifications
MIN_CONTEXT = 16  # a bare s<n> under this is taken for a forgotten k; s<n>t says "n tokens" on purpose


def _size(digits: str, unit: str | None) -> int:
    return int(digits) * (1024 if unit == "k" else 1)


# The batches mla-tune measures, checked on a spec's text before a request is built: ``99999999q1s4k`` would
# otherwise allocate 10^8 requests before anything could refuse it. decode_64k's largest batch (256q1s64k)
# holds 16M cached tokens.
MAX_REQUESTS = 4096  # requests in one batch (vLLM schedules at most max_num_seqs, 1024 at most by default)
MAX_LEN = 1 << 20  # tokens of one request, new plus cached (1024k)
MAX_CACHED = 1 << 26  # tokens over all requests of a batch (64M)
MAX_SPEC_CHARS = 512


def parse(spec: str) -> Shape:
    """Parse a batch spec within the sizes above; raises ``BatchSpecError`` naming the first bad segment."""
    if not spec or not spec.strip():
        raise BatchSpecError(spec, spec, "empty spec")
    if len(spec) > MAX_SPEC_CHARS:
        raise BatchSpecError(spec[:40] + "...", spec[:40] + "...", f"longer than {MAX_SPEC_CHARS} characters")
    total = cached = 0
    for seg in spec.split("_"):  # bounds first, on the text: nothing is allocated for a batch that is refused
        m = _SEGMENT.fullmatch(seg)
        if not m:
            continue  # the loop below names what is wrong with it
        count = int(m.group(1) or 1)
        q_len = _size(m.group(2), m.group(3))
        kv_len = _size(m.group(4), m.group(5)) if m.group(4) else q_len
        if max(q_len, kv_len) > MAX_LEN:
            raise BatchSpecError(spec, seg, f"{max(q_len, kv_len)} tokens per request; at most {MAX_LEN} (1024k)")
        total, cached = total + count, cached + count * kv_len
        if total > MAX_REQUESTS:
            raise BatchSpecError(spec, seg, f"{total} requests in one batch; at most {MAX_REQUESTS}")
        if cached > MAX_CACHED:
            raise BatchSpecError(spec, seg, f"{cached} tokens in one batch; at most {MAX_CACHED} (64M)")
    requests: list[Request] = []
    for seg in spec.split("_"):
        m = _SEGMENT.fullmatch(seg)
        if not m:
            raise BatchSpecError(spec, seg, "expected [count]q<len>[k][s<len>[k]], e.g. 64q1s4k")
        count = int(m.group(1)) if m.group(1) else 1
        q_len = _size(m.group(2), m.group(3))
        kv_len = _size(m.group(4), m.group(5)) if m.group(4) else q_len
        if count < 1:
            raise BatchSpecError(spec, seg, "count must be at least 1")
        if q_len < 1:
            raise BatchSpecError(spec, seg, "q_len must be at least 1")
        if m.group(4) and not m.group(5) and kv_len < MIN_CONTEXT:
            raise BatchSpecError(spec, seg, f"a context of {kv_len} tokens: for {kv_len * 1024} write s{kv_len}k "
                                 f"(a context under {MIN_CONTEXT} tokens is written s{kv_len}t)")
        if kv_len < q_len:
            raise BatchSpecError(spec, seg, f"kv_len {kv_len} is shorter than q_len {q_len}")
        requests.extend([Request(q_len, kv_len)] * count)
    return Shape(tuple(requests))


def _fmt_size(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def format(shape: Shape) -> str:  # noqa: A001 - the grammar's own verb, paired with parse
    """The canonical spec of a shape: consecutive equal requests grouped, sizes in k where exact."""
    segments = []
    for req, group in groupby(shape.requests):
        count = sum(1 for _ in group)
        seg = f"{count if count > 1 else ''}q{_fmt_size(req.q_len)}"
        if req.kv_len != req.q_len:
            seg += f"s{_fmt_size(req.kv_len)}" + ("t" if req.kv_len < MIN_CONTEXT else "")
        segments.append(seg)
    return "_".join(segments)


def canonical(spec: str) -> str:
    """``64q1s4096`` -> ``64q1s4k``: one name per shape, so studies and tables never split."""
    return format(parse(spec))


def request_kind(req: Request) -> str:
    if req.q_len == 1:
        return "decode"
    if req.q_len == req.kv_len:
        return "prefill"
    return "spec-decode" if req.q_len <= SPEC_DECODE_MAX_Q else "extend"


def classify(shape: Shape) -> str:
    """``decode``, ``spec-decode``, ``extend``, ``prefill`` or ``mixed`` (several kinds in one batch)."""
    kinds = {request_kind(r) for r in shape.requests}
    return kinds.pop() if len(kinds) == 1 else "mixed"
