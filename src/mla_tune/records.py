"""Typed records of what mla-tune stores in Optuna: read and written here, never split or joined elsewhere."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyName:
    """An Optuna study name, ``H100/deepseek-v3-tp1/FLASH_ATTN_MLA/64q1s4k``: it reads well in optuna-dashboard's
    study list, and studies of different GPUs, models or backends never share one."""

    gpu: str  # Environment.fingerprint: H100, or H100-replay for replayed measurements
    model: str  # the model's label with its TP and a non-default KV-cache dtype: deepseek-v3-tp1, ...-tp1-kvfp8
    backend: str  # decode backend: FLASH_ATTN_MLA
    label: str  # the shape spec (per-shape studies) or mix:<workload>

    @classmethod
    def parse(cls, text: str) -> StudyName:
        """The record of a stored name. The GPU comes first and the backend and label last, so a model label that
        holds "/" still parses."""
        parts = text.split("/")
        if len(parts) < 4 or not all(parts):
            raise ValueError(f"not an mla-tune study name: {text!r} (want GPU/MODEL-tpN/BACKEND/SHAPE)")
        return cls(parts[0], "/".join(parts[1:-2]), parts[-2], parts[-1])

    def __str__(self) -> str:
        return f"{self.gpu}/{self.model}/{self.backend}/{self.label}"


__all__ = ["StudyName"]
