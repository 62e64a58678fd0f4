"""From a config's params to the settings a vLLM deployment takes: pure functions over knobs and an adapter.

Some knobs have a vLLM setting that holds one value for the whole deployment (``--attention-config``,
``--compilation-config``, an environment variable); the rest (TRITON_MLA's split count, the reorder threshold,
and any value chosen per batch size) reach vLLM only through mla-tune's plugin (``mla_tune.serving.plugin``).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..knobs import knob
from ..vllm_adapters import Adapter


@dataclass(frozen=True)
class ServingSettings:
    attention_config: dict[str, Any] = field(default_factory=dict)
    compilation_config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    plugin_only: tuple[str, ...] = ()  # "name=value" that only the mla-tune plugin can apply
    missing: tuple[str, ...] = ()  # "name=value" this vLLM cannot run at all (e.g. cuDNN prefill on 0.22+)

    def args(self) -> str:
        """``VAR=N vllm serve MODEL ...``-style arguments for these settings (shell-quoted)."""
        parts = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        if self.attention_config:
            parts += ["--attention-config", shlex.quote(json.dumps(self.attention_config, sort_keys=True))]
        if self.compilation_config:
            parts += ["--compilation-config", shlex.quote(json.dumps(self.compilation_config, sort_keys=True))]
        return " ".join(parts)


def serving_settings(backend: str, params: Mapping[str, Any], defaults: Mapping[str, Any] | None,
                     adapter: Adapter) -> ServingSettings:
    """The settings of ``adapter``'s vLLM that run ``params`` on ``backend``; params equal to ``defaults`` need none."""
    defaults = defaults or {}
    attention: dict[str, Any] = {"backend": backend}
    compilation: dict[str, Any] = {}
    env: dict[str, str] = {}
    plugin: list[str] = []
    missing: list[str] = []
    for name, value in sorted(params.items()):
        if name in defaults and defaults[name] == value:
            continue
        if name == "prefill_backend":
            fields = adapter.prefill_settings.get(str(value))
            if fields is None and value != "auto":
                missing.append(f"{name}={value}")
            attention.update(fields or {})
            continue
        setting = adapter.global_setting(knob(name).name, backend)
        if setting is None:
            plugin.append(f"{name}={value}")
        elif value not in setting.skip:
            spelled = setting.spell(value)
            target = {"attention_config": attention, "compilation_config": compilation}.get(setting.section)
            if target is None:
                env[setting.key] = str(spelled)
            else:
                target[setting.key] = spelled
    return ServingSettings(attention, compilation, env, tuple(plugin), tuple(missing))
