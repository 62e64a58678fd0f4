"""The runner contract holds for the test double too, so study tests run against a faithful fake."""

from __future__ import annotations

import pytest

from mla_tune import batch_spec
from mla_tune.models import get_model
from mla_tune.types import Case, freeze_params

from .fakes import FakeRunner
from .runner_contract import RunnerContract


class TestFakeRunnerContract(RunnerContract):
    @pytest.fixture
    def runner(self):
        return FakeRunner()

    @pytest.fixture
    def ok_case(self):
        return Case("FLASH_ATTN_MLA", batch_spec.parse("8q1s1k"), get_model("deepseek-v3", 8),
                    freeze_params({"cuda_graphs": True}))

    @pytest.fixture
    def refused_case(self):
        return Case("CUTLASS_MLA", batch_spec.parse("8q1s1k"), get_model("deepseek-v3", 8))
