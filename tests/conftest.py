"""Shared fixtures; ``gpu`` tests are skipped where there is no CUDA GPU with vLLM."""

from __future__ import annotations

import importlib.util
import os

import pytest


def _gpu_ready() -> bool:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = None
    for item in items:
        if "gpu" in item.keywords:
            gpu = _gpu_ready() if gpu is None else gpu
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU with torch and vLLM"))
        if "postgres" in item.keywords and not os.environ.get("MLA_TUNE_TEST_POSTGRES"):
            item.add_marker(pytest.mark.skip(reason="set MLA_TUNE_TEST_POSTGRES to a PostgreSQL URL"))
