"""mla-tune's vLLM general plugin: applies a serving profile (``MLA_TUNE_PROFILE``) inside vLLM's engine.

vLLM calls ``register`` once in every engine and worker process, before the model loads, the attention metadata
builders are created and CUDA graphs are captured. Without ``MLA_TUNE_PROFILE`` it does nothing. With one it
patches the metadata builders and impls of the installed vLLM (names from its adapter); when the first builder is
created it checks the profile against the engine (GPU, compute capability, backend, heads per GPU, MLA ranks, KV
dtype, vLLM family) and either logs once what it applies or logs the mismatch and keeps vLLM's defaults. Nothing
the plugin meets can stop the server: every failure is one log line and vLLM's defaults.

``Applier`` is the decision logic, free of vLLM, so the CPU tests drive it with fake builders.
"""

from __future__ import annotations

import logging
import os
import threading

from ..errors import one_line
from ..types import ParamValue
from ..vllm_adapters import Adapter
from .profile import Profile, RunningEngine, load_profile, mismatch

ENV = "MLA_TUNE_PROFILE"
# A child of vLLM's logger, so that what the plugin did shows in the server log, in vLLM's format.
log = logging.getLogger("vllm.mla_tune")
# What the plugin decided in this process, newest last (the same lines it logs): for tests and bench/e2e.py.
EVENTS: list[str] = []


def _say(level: int, msg: str, *args: object) -> None:
    EVENTS.append(msg % args if args else msg)
    log.log(level, msg, *args)


def _failure(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}")


class Applier:
    """What the patches ask: is the profile active here, which values apply now. Logs each decision once."""

    def __init__(self, profile: Profile, adapter: Adapter, source: str = "") -> None:
        self.profile, self.adapter, self.source = profile, adapter, source
        self.active: bool | None = None  # None until the first builder shows the engine
        # per-call lookups are dict hits; contexts are bucketed to 256 tokens so the cache stays small on eager paths
        self._chosen: dict[tuple[str, int, int | None], ParamValue] = {}
        self._logged: set[tuple[str, int, object]] = set()  # one log line per (knob, batch, measured point)
        self._other_backends: set[str] = set()
        self._lock = threading.Lock()

    # -- the engine, once --------------------------------------------------------------------------------
    def on_engine(self, engine: RunningEngine) -> bool:
        """Decide once, at the first builder of the profile's backend. A builder of another backend (a draft model's,
        or the engine runs another backend than the profile's) gets nothing, with one warning per backend."""
        with self._lock:
            if engine.backend != self.profile.match.backend:
                if engine.backend not in self._other_backends:
                    self._other_backends.add(engine.backend)
                    _say(logging.WARNING, "mla-tune: profile %s is for %s; this engine built a %s metadata builder, "
                         "which keeps vLLM's defaults", self.source, self.profile.match.backend, engine.backend)
                return False
            if self.active is None:
                reason = mismatch(self.profile.match, engine)
                self.active = reason is None
                if reason:
                    _say(logging.WARNING, "mla-tune: profile %s not applied: it was measured for another engine "
                         "(%s); vLLM's defaults are kept", self.source, reason)
                else:
                    _say(logging.INFO, "mla-tune: profile %s applied to %s on %s (vLLM %s): %s", self.source,
                         engine.backend, engine.gpu, engine.vllm, self.describe())
            return bool(self.active)

    def fail(self, exc: BaseException, where: str) -> None:
        """A patch met something it did not expect: stop applying, keep vLLM's defaults, say so once."""
        with self._lock:
            if self.active is not False:
                _say(logging.WARNING, "mla-tune: profile %s disabled at %s (%s); vLLM's defaults are kept", self.source,
                            where, _failure(exc))
            self.active = False

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.profile.at_build]
        for rule in self.profile.per_batch:
            pts = ", ".join(f"{p.tokens}{'@' + str(p.context) if p.context else ''}:{p.value}" for p in rule.points)
            parts.append(f"{rule.knob} per decode tokens (nearest of {pts})")
        return "; ".join(parts) or "nothing to change (every knob at vLLM's default)"

    # -- values --------------------------------------------------------------------------------------------
    def builder_settings(self, backend: str) -> dict[str, ParamValue]:
        """Builder attributes to set once at creation (at-build knobs), by vLLM attribute name."""
        attrs = self.adapter.builder_attrs.get(backend, {})
        return {attrs[name]: value for name, value in self.profile.at_build if name in attrs}

    def per_batch(self, name: str, tokens: int, context: int | None = None) -> ParamValue | None:
        """The value of ``name`` for a decode batch of ``tokens`` (padded) tokens, or None: leave vLLM's."""
        if not self.active:
            return None
        rule = self.profile.rule(name)
        if rule is None:
            return None
        ctx = (context // 256) * 256 if rule.uses_context and context else None
        key = (name, tokens, ctx)
        if key not in self._chosen:
            point = rule.select(tokens, ctx)
            if point is None:  # a context no point was measured near: vLLM's own value
                self._chosen[key] = None
                measured = sorted({p.context for p in rule.points if p.context})
                if (name, ctx) not in self._logged:
                    self._logged.add((name, ctx))
                    _say(logging.INFO, "mla-tune: %s left to vLLM at context about %d: measured only at %s", name,
                         ctx, ", ".join(str(c) for c in measured))
                return None
            self._chosen[key] = point.value
            if (name, tokens, point) not in self._logged:
                self._logged.add((name, tokens, point))
                _say(logging.INFO, "mla-tune: %s=%s for decode batches of %d tokens%s (measured at %s)", name,
                     point.value, tokens, f", context about {ctx}" if ctx else "", point.shape or point.tokens)
        return self._chosen[key]

    def kernel_splits(self, name: str, tokens: int, context: int | None, heuristic: int) -> int:
        """A split count for the kernel call: the profile's, or ``heuristic`` where it says ``auto``/nothing."""
        value = self.per_batch(name, tokens, context)
        return heuristic if value in (None, "auto") else int(value)  # type: ignore[arg-type]


def register() -> None:
    """The ``vllm.general_plugins`` entry point. Never raises: a problem is one log line, vLLM's defaults stay."""
    path: object = os.environ.get(ENV, "")
    try:
        from .. import env

        profile_path = env.profile_path()  # one typed reader for every variable (a bad value: one line here)
        if profile_path is None:
            return
        path = profile_path
        from ..vllm_adapters import installed_adapter

        profile = load_profile(profile_path)
        adapter = installed_adapter()
        from ..vllm_adapters import _patches

        installed = _patches.install(Applier(profile, adapter, path), adapter, profile.match.backend)
        _say(logging.INFO, "mla-tune: plugin loaded with profile %s (%s; patched %s)", path, adapter.label,
                 ", ".join(installed) or "nothing")
    except Exception as exc:  # noqa: BLE001 - the server must start whatever the profile holds
        _say(logging.WARNING, "mla-tune: profile %s not applied: %s; vLLM's defaults are kept", path, _failure(exc))

