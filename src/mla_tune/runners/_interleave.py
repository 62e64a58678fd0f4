"""Paired recordings: several configs of one shape timed sample by sample in one recording, without torch.

Under sustained load a power-capped GPU moves its clock by several percent over tens to hundreds of milliseconds,
so two recordings taken one after the other differ by more than the 5-10% a setting is worth. Interleaved, the
configs ("arms") take turns sample by sample in blocks that run every arm twice in mirrored order (A B B A, or
A B C C B A rotated block by block), so a clock change hits every arm of a block alike, and the GPU is kept busy
throughout: the next blocks are queued while the host waits for the oldest one.

The device is reached only through an injected ``Timer`` (CUDA events in the worker, a virtual clock in the tests),
so this module's logic runs under the CPU tests. ``paired_measurement`` turns a recording into the
``PairedMeasurement`` the runners return; ``composed`` builds one from separate recordings (runners that cannot
interleave, sweeps recorded before pairing), saying so (``blocks == 0``).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..stats import block_speedup, blocks_of
from ..types import Measurement, PairedMeasurement, PairStat, Status
from ._timing_policy import PairedPolicy, timing_details


class Timer(Protocol):
    """Marks on the device's timeline: ``mark()`` records one after the work queued so far; ``elapsed_ms(a, b)``
    waits for ``b`` and returns the device time between the two marks; ``drain()`` waits until the device is idle."""

    def mark(self) -> Any: ...

    def elapsed_ms(self, start: Any, stop: Any) -> float: ...

    def drain(self) -> None: ...


def balanced_blocks(n_arms: int, seed: int = 0) -> Iterator[tuple[int, ...]]:
    """Endless blocks of arm indices: a seeded permutation rotated one step per block, then mirrored (A B B A,
    B A A B, ...), so that over every ``n_arms`` blocks each arm leads once and linear drift inside a block cancels."""
    base = list(range(n_arms))
    random.Random(seed).shuffle(base)
    k = 0
    while True:
        perm = base[k % n_arms:] + base[:k % n_arms]
        yield tuple(perm + perm[::-1])
        k += 1


@dataclass(frozen=True)
class Recording:
    """One interleaved recording: per arm its per-call milliseconds in time order, the arm of each sample in time
    order, the clock readings taken around and during it, and the device time it timed."""

    samples_ms: tuple[tuple[float, ...], ...]
    order: tuple[int, ...]
    readings: tuple[Any, ...]
    gpu_ms: float

    @property
    def blocks(self) -> int:
        return len(self.order) // (2 * len(self.samples_ms))


def enough(blocks: int, gpu_ms: float, n_arms: int, policy: PairedPolicy) -> bool:
    """A recording stops at ``max_blocks``, or once it has ``min_blocks`` and ``min_time_ms`` per arm of device time."""
    if blocks >= policy.max_blocks:
        return True
    return blocks >= policy.min_blocks and gpu_ms >= policy.min_time_ms * n_arms


def record(replays: Sequence[Callable[[], None]], calls: int, timer: Timer, policy: PairedPolicy, seed: int = 0,
           read_clocks: Callable[[], Any] = lambda: None, now: Callable[[], float] = time.perf_counter,
           eager: Sequence[bool] = ()) -> Recording:
    """Time ``replays`` interleaved in balanced blocks until ``enough``; each sample is one call of a replay (``calls``
    layer calls), reported per layer call. ``policy.inflight`` blocks stay queued ahead of the one being waited for,
    so the device never waits for the host between samples; clocks are read every ``policy.clock_every_s``.

    An ``eager`` arm launches its kernels one by one from the host: queued behind other work its sample would shrink
    towards pure device time, and by how much would depend on what it follows. So the device is drained before each
    of its samples, which then always include its own launches, as an eager step in serving does."""
    n = len(replays)
    order_gen = balanced_blocks(n, seed)
    samples: list[list[float]] = [[] for _ in range(n)]
    order: list[int] = []
    pending: deque[list[tuple[int, Any, Any]]] = deque()
    readings = [read_clocks()]
    last_read = now()
    blocks, gpu_ms = 0, 0.0

    def enqueue() -> None:
        marks = []
        for arm in next(order_gen):
            if arm < len(eager) and eager[arm]:
                timer.drain()
            start = timer.mark()
            replays[arm]()
            marks.append((arm, start, timer.mark()))
        pending.append(marks)

    def collect() -> None:
        nonlocal blocks, gpu_ms
        for arm, start, stop in pending.popleft():
            ms = timer.elapsed_ms(start, stop)
            samples[arm].append(ms / calls)
            order.append(arm)
            gpu_ms += ms
        blocks += 1

    queued = 0
    for _ in range(min(max(1, policy.inflight), policy.max_blocks)):
        enqueue()
        queued += 1
    while True:
        collect()
        if now() - last_read >= policy.clock_every_s:
            readings.append(read_clocks())
            last_read = now()
        if enough(blocks, gpu_ms, n, policy):
            break
        if queued < policy.max_blocks:
            enqueue()
            queued += 1
    while pending:  # blocks already queued are complete recordings too
        collect()
    readings.append(read_clocks())
    return Recording(tuple(tuple(s) for s in samples), tuple(order), tuple(readings), gpu_ms)


def pair_stats(samples: Sequence[Sequence[float]], order: Sequence[int], level: float = 0.95) -> list[PairStat]:
    """Each arm of an interleaved recording against arm 0 (``PairStat``), block by block."""
    blocks = blocks_of(order, samples)
    ref_ms = statistics.median(samples[0])
    out = []
    for arm in range(len(samples)):
        if arm == 0:
            out.append(PairStat(ref_ms, 1.0, (1.0, 1.0), len(blocks)))
            continue
        speedup, ci = block_speedup(blocks, 0, arm, level)
        out.append(PairStat(ref_ms, speedup, ci, len(blocks)))
    return out


def paired_measurement(arms: Sequence[Measurement | None], recording: Recording | None,
                       arm_details: Sequence[Mapping[str, str]] = (), rel_errs: Sequence[float | None] = (),
                       details: Mapping[str, str] | None = None) -> PairedMeasurement:
    """The ``PairedMeasurement`` of a recording of the arms that are None in ``arms`` (in their order); arms that
    failed before the recording keep their failed ``Measurement``. Arm 0, the reference, must be among the recorded."""
    recorded = [i for i, m in enumerate(arms) if m is None]
    if not recorded or recorded[0] != 0 or recording is None:
        raise ValueError("the reference arm (0) must be recorded")
    stats = pair_stats(recording.samples_ms, recording.order)
    out_arms: list[Measurement] = []
    out_pairs: list[PairStat | None] = []
    for i, m in enumerate(arms):
        if m is not None:
            out_arms.append(m)
            out_pairs.append(None)
            continue
        k = recorded.index(i)
        d = dict(arm_details[i]) if i < len(arm_details) else {}
        s = recording.samples_ms[k]
        d.update(timing_details(s, 0))
        rel_err = rel_errs[i] if i < len(rel_errs) else None
        out_arms.append(Measurement(Status.OK, s, "", rel_err, tuple(sorted(d.items()))))
        out_pairs.append(stats[k])
    rec = {"paired": "interleaved", "blocks": str(recording.blocks), "gpu_s": f"{recording.gpu_ms / 1e3:.4g}",
           **(details or {})}
    order = tuple(recorded[a] for a in recording.order)  # arm indices as the caller numbered them
    return PairedMeasurement(tuple(out_arms), tuple(out_pairs), order, tuple(sorted(rec.items())))


def composed(arms: Sequence[Measurement], note: str = "separate recordings") -> PairedMeasurement:
    """A ``PairedMeasurement`` from separately recorded arms: each arm's pair is the ratio of its median to the
    reference's, with no interval (``blocks == 0``). A failed reference fails every arm."""
    ref = arms[0]
    if not ref.ok:
        failed = Measurement.failed(ref.status, f"vLLM's default config failed, nothing to compare with: {ref.message}")
        return PairedMeasurement((ref,) + (failed,) * (len(arms) - 1), (None,) * len(arms))
    pairs = [PairStat(ref.median_ms, ref.median_ms / m.median_ms) if m.ok else None for m in arms]
    pairs[0] = PairStat(ref.median_ms, 1.0)
    gpu_ms = sum(sum(m.samples_ms) for m in arms if m.ok)
    return PairedMeasurement(tuple(arms), tuple(pairs), (),
                             (("gpu_s", f"{gpu_ms / 1e3:.4g}"), ("paired", f"no: {note}")))


def merge_arms(n: int, refused: Mapping[int, Measurement], sub: PairedMeasurement, live: Sequence[int]
               ) -> PairedMeasurement:
    """A recording of the ``live`` arms of ``n`` (``sub``, numbered 0..) with the arms ``refused`` before it put back
    in their places."""
    arms: list[Measurement | None] = [None] * n
    pairs: list[PairStat | None] = [None] * n
    for k, i in enumerate(live):
        arms[i], pairs[i] = sub.arms[k], sub.pairs[k]
    for i, m in refused.items():
        arms[i], pairs[i] = m, None
    if any(a is None for a in arms):
        raise ValueError("every arm is either live or refused")
    return PairedMeasurement(tuple(arms), tuple(pairs), tuple(live[a] for a in sub.order), sub.details)  # type: ignore[arg-type]


def resampled(samples: Sequence[Sequence[float]], order: Sequence[int], rng: random.Random
              ) -> tuple[tuple[tuple[float, ...], ...], tuple[int, ...]]:
    """A bootstrap copy of an interleaved recording: its blocks drawn with replacement, each kept whole, so a
    replayed pair keeps the recorded pairing (both arms of a block saw the same clock)."""
    blocks = blocks_of(order, samples)
    size = 2 * len(samples)
    picks = [rng.randrange(len(blocks)) for _ in blocks]
    new_samples: list[list[float]] = [[] for _ in samples]
    new_order: list[int] = []
    full_order = list(order)
    for b in picks:
        taken = dict.fromkeys(range(len(samples)), 0)
        for arm in full_order[b * size:(b + 1) * size]:
            new_samples[arm].append(blocks[b][arm][taken[arm]])
            taken[arm] += 1
            new_order.append(arm)
    return tuple(tuple(s) for s in new_samples), tuple(new_order)


def event_share(readings: Sequence[Any], reasons_of: Callable[[Any], int], mask: int) -> float | None:
    """The share of the clock readings taken during a recording that show a clock event in ``mask`` (None: no
    reading)."""
    got = [r for r in readings if r is not None]
    if not got:
        return None
    return sum(1 for r in got if reasons_of(r) & mask) / len(got)


__all__ = ["Recording", "Timer", "balanced_blocks", "composed", "enough", "pair_stats", "paired_measurement",
           "event_share", "merge_arms", "record", "resampled"]
