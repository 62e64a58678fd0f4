"""The contract every runner passes: subclass ``RunnerContract`` once per runner (the vLLM one marked gpu)."""

from __future__ import annotations

import math

import pytest

from mla_tune.runners import Runner
from mla_tune.space import BACKENDS, PREFILL_BACKENDS
from mla_tune.types import BackendStatus, Case, Environment, Measurement, Status


class RunnerContract:
    """Subclasses provide a runner and two cases: one it can measure, one it must refuse as data."""

    @pytest.fixture
    def runner(self) -> Runner:
        raise NotImplementedError

    @pytest.fixture
    def ok_case(self) -> Case:
        raise NotImplementedError

    @pytest.fixture
    def refused_case(self) -> Case:
        raise NotImplementedError

    def test_environment_describes_the_source(self, runner: Runner) -> None:
        env = runner.environment()
        assert isinstance(env, Environment)
        assert env.runner == runner.name
        assert env.gpu_name and env.compute_capability and env.sm_count > 0
        assert Environment.from_dict(env.as_dict()) == env

    def test_backends_cover_every_decode_and_prefill_backend(self, runner: Runner) -> None:
        statuses = runner.backends()
        assert all(isinstance(s, BackendStatus) for s in statuses)
        decode = {s.name for s in statuses if s.kind == "decode"}
        prefill = {s.name for s in statuses if s.kind == "prefill"}
        assert set(BACKENDS) <= decode
        assert set(PREFILL_BACKENDS) - {"auto"} <= prefill
        assert all(s.reason for s in statuses if not s.available)

    def test_measure_returns_positive_finite_samples(self, runner: Runner, ok_case: Case) -> None:
        m = runner.measure(ok_case)
        assert isinstance(m, Measurement)
        assert m.status is Status.OK, m.message
        assert len(m.samples_ms) >= 5
        assert all(math.isfinite(x) and x > 0 for x in m.samples_ms)
        assert m.median_ms > 0 and m.spread >= 0

    def test_measuring_again_still_works(self, runner: Runner, ok_case: Case) -> None:
        first, second = runner.measure(ok_case), runner.measure(ok_case)
        assert first.ok and second.ok

    def test_refusal_is_data_not_an_exception(self, runner: Runner, refused_case: Case) -> None:
        m = runner.measure(refused_case)
        assert m.status is not Status.OK
        assert m.message and not m.samples_ms
