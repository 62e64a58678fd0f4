"""The one rounds loop of confirmation and ``verify``: paired recordings of vLLM's default, the default built
again, and the candidates, round after round, until the noise floor is narrow enough.

A round is one recording per shape (``Runner.measure_paired``) of every arm at once: arm 0 vLLM's default, arm 1
the default built again (its own engine, metadata and graph), then each candidate. Per round, an arm's time is the
traffic-weighted sum over the shapes of the default's median and of the arm's time on the default's scale (the
default's median over the arm's speedup in that recording), so a round's ratio is the pairing's, never a ratio of
two recordings. The default against itself gives the noise floor (``Rounds`` of ``floor``); the judge
(``verdict.judge_candidates``) turns the rounds into speedups and intervals.

How many rounds: at least ``min_rounds``; then, while the floor's interval is wider than ``target`` (a half-width,
relative) and fewer than ``max_rounds`` ran, ``step`` more for every arm. Whether to go on is decided from the
default against itself alone, never from a candidate's result, so the extra rounds cannot favour one (the
candidates' intervals keep their level).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..records import Rounds
from ..runners import Runner
from ..stats import paired_speedup, round_sig
from ..types import Case


@dataclass
class ArmRounds:
    """One candidate's per-round times (the default's and its own, on the default's scale), and its failure."""

    default: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    samples: int = 0
    default_samples: int = 0
    failed: str | None = None
    failed_round: int | None = None
    note: str | None = None  # a failure in rounds dropped by ``truncate``

    def rounds(self) -> Rounds:
        return Rounds(tuple(round_sig(x) for x in self.default), tuple(round_sig(x) for x in self.best))


class PairedRounds:
    """Rounds of one recording per shape holding the default twice and every live candidate (see the module doc).

    ``default_cases[s]`` is vLLM's default on shape ``s``, ``arms[k][s]`` candidate ``k`` there, ``weights[s]`` the
    shape's weight (1 for a lone shape: a weight never scales one shape's latency)."""

    def __init__(self, default_cases: Sequence[Case], arms: Sequence[Sequence[Case]], weights: Sequence[float]):
        if len(weights) != len(default_cases) or any(len(a) != len(default_cases) for a in arms):
            raise ValueError("one case and one weight per shape")
        self.defaults, self.cands = list(default_cases), [list(a) for a in arms]
        self.weights = [1.0] if len(weights) == 1 else [float(w) for w in weights]
        self.floor = ArmRounds()
        self.arms = [ArmRounds() for _ in arms]
        self.gpu_s = 0.0
        self.pairing: set[str] = set()  # what the recordings said of their pairing (``paired`` detail)
        self.failed: str | None = None  # the default itself failed: nothing is judged

    @property
    def done(self) -> int:
        return len(self.floor.best)

    def measure_to(self, runner: Runner, rounds: int, check: Callable[[], None] | None = None,
                   on_round: Callable[[int], None] | None = None) -> None:
        """Record rounds until ``rounds`` are done (or the default fails)."""
        while self.failed is None and self.done < rounds:
            if check is not None:
                check()
            self._round(runner)
            if on_round is not None:
                on_round(self.done)

    def _round(self, runner: Runner) -> None:
        i = self.done
        live = [k for k, a in enumerate(self.arms) if a.failed is None]
        totals = {k: [0.0, 0.0, 0, 0] for k in ["again", *live]}  # default ms, arm ms, arm samples, default samples
        for s, ref in enumerate(self.defaults):
            pm = runner.measure_paired([ref, ref, *(self.cands[k][s] for k in live)])
            self.gpu_s += pm.gpu_s
            self.pairing.add(dict(pm.details).get("paired", "unknown"))
            spec = ref.shape
            for slot, m in enumerate(pm.arms[:2]):
                if not m.ok or pm.pairs[slot] is None:
                    self.failed = f"{_spec(spec)}: {m.status.value}: {m.message}"
                    self.floor.failed, self.floor.failed_round = self.failed, i
                    return
            w = self.weights[s]
            for key, slot in [("again", 1), *((k, 2 + j) for j, k in enumerate(live))]:
                if key not in totals:
                    continue
                m, pair = pm.arms[slot], pm.pairs[slot]
                if not m.ok or pair is None:
                    arm = self.arms[key]  # type: ignore[index]
                    arm.failed, arm.failed_round = f"{_spec(spec)}: {m.status.value}: {m.message}", i
                    del totals[key]
                    continue
                t = totals[key]
                t[0] += w * pair.reference_ms
                t[1] += w * pair.paired_ms
                t[2] += len(m.samples_ms)
                t[3] += len(pm.arms[0].samples_ms)
        for key, (d, b, n, nd) in totals.items():
            arm = self.floor if key == "again" else self.arms[key]  # type: ignore[index]
            arm.default.append(d)
            arm.best.append(b)
            arm.samples += n
            arm.default_samples += nd

    def floor_half_width(self, level: float) -> float | None:
        """The floor's interval half-width (relative) at ``level``; None before two rounds."""
        if self.done < 2:
            return None
        ps = paired_speedup(self.floor.default, self.floor.best, level)
        return (ps.ci_high - ps.ci_low) / 2

    def truncate(self, rounds: int) -> None:
        """Back to the first ``rounds`` rounds: a failure after them becomes a note on its arm."""
        for arm in [self.floor, *self.arms]:
            del arm.default[rounds:]
            del arm.best[rounds:]
            if arm.failed is not None and arm.failed_round is not None and arm.failed_round >= rounds:
                arm.note = f"judged on {rounds} rounds; round {arm.failed_round + 1} failed: {arm.failed}"
                arm.failed = arm.failed_round = None
        if self.floor.failed is None:
            self.failed = None

    def failed_after(self, rounds: int) -> bool:
        return any(a.failed is not None and a.failed_round is not None and a.failed_round >= rounds
                   for a in [self.floor, *self.arms])


def run_rounds(pr: PairedRounds, runner: Runner, min_rounds: int, max_rounds: int, step: int, target: float,
               level: float, more_allowed: Callable[[], bool] = lambda: True,
               check: Callable[[], None] | None = None,
               on_round: Callable[[int, float | None], None] | None = None) -> int:
    """Record ``min_rounds``, then ``step`` more while the floor is wider than ``target`` (see the module doc).

    A failure in extra rounds sends every arm back to the rounds all completed, so that the extension never decides
    which candidate stands. Returns the rounds judged."""
    def said(n: int) -> None:
        if on_round is not None:
            on_round(n, pr.floor_half_width(level))

    pr.measure_to(runner, min_rounds, check, said)
    rounds = min_rounds
    while rounds < max_rounds and pr.failed is None and more_allowed():
        half = pr.floor_half_width(level)
        if half is not None and half <= target:
            break
        before, rounds = rounds, min(max_rounds, rounds + step)
        pr.measure_to(runner, rounds, check, said)
        if pr.failed_after(before):
            pr.truncate(before)
            return before
    return min(rounds, pr.done)


def _spec(shape: object) -> str:
    from ..batch_spec import format as format_spec

    return format_spec(shape)  # type: ignore[arg-type]


__all__ = ["ArmRounds", "PairedRounds", "run_rounds"]
