"""The rounds loop shared by confirmation and verify: one recording per shape and round, extended on the floor alone."""

from __future__ import annotations

import pytest

from mla_tune import batch_spec
from mla_tune.models import get_model
from mla_tune.vllm_adapters import adapter_for
from mla_tune.study.rounds import PairedRounds, run_rounds
from mla_tune.types import Case, freeze_params

from .fakes import FakeRunner

DIMS = get_model("deepseek-v3", 1)


def case(spec: str, **params) -> Case:
    shape = batch_spec.parse(spec)
    config = adapter_for("0.20.0").search_space("FLASH_ATTN_MLA").default_config(shape) | params
    return Case("FLASH_ATTN_MLA", shape, DIMS, freeze_params(config))


class Wild(FakeRunner):
    """vLLM's default and its second build agree to ``floor_noise``; candidate arms wobble by ``cand_noise`` each
    recording (what pairing cannot cancel)."""

    def __init__(self, floor_noise: float, cand_noise: float, speedup: float = 1.1, **kw) -> None:
        super().__init__(noise=0.001, **kw)
        self.floor_noise, self.cand_noise, self.speedup = floor_noise, cand_noise, speedup

    def mean_ms(self, case, arm=0, cases=()):
        base = super().mean_ms(case) / self.factor(case)
        if case.param_dict == self.default_of(case):
            return base * (1 + self.rng.uniform(-self.floor_noise, self.floor_noise) if arm else 1)
        return base / self.speedup * (1 + self.rng.uniform(-self.cand_noise, self.cand_noise))


def rounds_for(runner, min_rounds=4, max_rounds=20, target=0.005):
    pr = PairedRounds([case("64q1s4k")], [[case("64q1s4k", max_num_splits=1)]], [1.0])
    n = run_rounds(pr, runner, min_rounds, max_rounds, 2, target, 0.95)
    return n, pr


def test_the_floor_alone_decides_whether_to_go_on():
    """A candidate that wobbles by 20% gets no extra rounds while the default agrees with itself; a default whose
    two builds disagree by 3% gets them, however steady the candidate."""
    n, pr = rounds_for(Wild(floor_noise=0.0005, cand_noise=0.2))
    assert n == 4 and len(pr.arms[0].best) == 4
    n, pr = rounds_for(Wild(floor_noise=0.03, cand_noise=0.0))
    assert n > 4 and n % 2 == 0 and len(pr.floor.best) == n
    n, _ = rounds_for(Wild(floor_noise=0.03, cand_noise=0.0), max_rounds=6)
    assert n == 6


def test_a_round_records_every_arm_of_a_shape_together_and_weighs_a_lone_shape_one():
    runner = FakeRunner(noise=0.001)
    pr = PairedRounds([case("64q1s4k")], [[case("64q1s4k", max_num_splits=1)], [case("64q1s4k", max_num_splits=8)]],
                      [5.0])
    pr.measure_to(runner, 2)
    assert [len(r) for r in runner.recordings] == [4, 4]  # default, default again, two candidates
    lone = runner.mean_ms(case("64q1s4k"))
    assert pr.arms[0].default[0] == pytest.approx(lone, rel=0.01)  # not 5x: a weight never scales one shape
    assert pr.gpu_s > 0 and pr.pairing == {"interleaved"}


def test_a_mix_weighs_each_shapes_times_and_a_failing_default_stops_all():
    runner = FakeRunner(noise=0.001)
    shapes = ["64q1s4k", "8q1s4k"]
    pr = PairedRounds([case(s) for s in shapes], [[case(s, max_num_splits=1) for s in shapes]], [2.0, 1.0])
    pr.measure_to(runner, 1)
    want = 2 * runner.mean_ms(case("64q1s4k")) + runner.mean_ms(case("8q1s4k"))
    assert pr.floor.default[0] == pytest.approx(want, rel=0.01)
    broken = FakeRunner(fail={"max_num_splits": 32})
    pr = PairedRounds([case("64q1s4k")], [[case("64q1s4k", max_num_splits=1)]], [1.0])
    assert run_rounds(pr, broken, 4, 8, 2, 0.005, 0.95) == 0
    assert pr.failed and "planted failure" in pr.failed and len(broken.recordings) == 1
