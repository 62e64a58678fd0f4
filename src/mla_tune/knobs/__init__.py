"""Every tunable vLLM MLA setting, declared once (``_declarations``), and lookups over the declarations."""

from __future__ import annotations

from ..errors import UnknownNameError
from ._declarations import BACKENDS, KNOBS, PREFILL_BACKENDS
from ._knob import Knob, RunnerApply, ServingApply, Situation

_BY_NAME = {k.name: k for k in KNOBS}


def knob(name: str) -> Knob:
    """The declaration of ``name``; an unknown name raises, listing the known ones."""
    if name not in _BY_NAME:
        raise UnknownNameError("parameter", name, _BY_NAME)
    return _BY_NAME[name]


def knob_names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def knobs_for(backend: str) -> tuple[Knob, ...]:
    """The knobs ``backend`` has, in resolve order."""
    return tuple(k for k in KNOBS if backend in k.backends)


def detail_key(name: str) -> str:
    """Where a measurement's details say what ``name``'s ``auto`` (or default) resolved to."""
    return knob(name).report_key if name in _BY_NAME else name


def check_params(backend: str, params: dict) -> list[str]:
    """Problems with a config's names and values on ``backend``, as messages (empty when fine)."""
    problems = []
    unknown = sorted(set(params) - set(_BY_NAME))
    if unknown:
        problems.append(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(_BY_NAME)}")
    for name in sorted(set(params) & set(_BY_NAME)):
        k = _BY_NAME[name]
        if backend not in k.backends:
            problems.append(f"{name} does not apply to {backend}")
        elif not k.accepts(params[name]):
            problems.append(f"{name}={params[name]!r}; allowed: {k.allowed()}")
    return problems


__all__ = ["BACKENDS", "KNOBS", "PREFILL_BACKENDS", "Knob", "RunnerApply", "ServingApply", "Situation",
           "check_params", "detail_key", "knob", "knob_names", "knobs_for"]
