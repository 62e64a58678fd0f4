"""The contract every runner passes: subclass ``RunnerContract`` once per runner (the vLLM one marked gpu)."""

from __future__ import annotations

import math

import pytest

from mla_tune.runners import Runner
from mla_tune.space import BACKENDS, PREFILL_BACKENDS
from mla_tune.vllm_adapters import default_adapter
from mla_tune.types import BackendStatus, Case, Environment, Measurement, PairedMeasurement, Status, freeze_params


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

    @pytest.fixture
    def refused_arm(self, ok_case: Case) -> Case:
        """A case of ``ok_case``'s shape the runner must refuse (CUTLASS_MLA: no runner here runs it)."""
        return Case("CUTLASS_MLA", ok_case.shape, ok_case.dims)

    def test_a_paired_recording_compares_each_arm_with_the_first(self, runner: Runner, ok_case: Case,
                                                                 refused_arm: Case) -> None:
        default = ok_case.with_params(default_adapter().search_space(ok_case.backend).default_config(ok_case.shape))
        pm = runner.measure_paired([default, ok_case, default, refused_arm])
        assert isinstance(pm, PairedMeasurement) and len(pm.arms) == 4
        assert [m.ok for m in pm.arms] == [True, True, True, False], [m.message for m in pm.arms]
        assert pm.arms[3].message and pm.pairs[3] is None
        assert pm.pairs[0].speedup == 1.0 and all(p.reference_ms > 0 for p in pm.pairs[:3])
        assert all(math.isfinite(p.speedup) and p.speedup > 0 for p in pm.pairs[:3])
        assert 0.8 < pm.pairs[2].speedup < 1.25  # the default against its second build
        assert all(len(m.samples_ms) >= 5 and all(x > 0 for x in m.samples_ms) for m in pm.arms[:3])

    def test_a_refused_reference_fails_every_arm(self, runner: Runner, ok_case: Case, refused_arm: Case) -> None:
        pm = runner.measure_paired([refused_arm, ok_case])
        assert not any(m.ok for m in pm.arms) and all(m.message for m in pm.arms)
