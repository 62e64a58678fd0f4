"""MLA model presets (``search_spaces/models.yaml``) and what one GPU of a TP deployment sees of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import _yaml
from .data import search_spaces_dir
from .errors import DataFileError, UnknownNameError, UsageError
from .types import MLADims

_DIM_KEYS = ("num_q_heads", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


@dataclass(frozen=True)
class ModelPreset:
    name: str
    description: str
    dims: MLADims  # at TP 1
    aliases: tuple[str, ...] = ()

    def at_tp(self, tp: int) -> MLADims:
        """The dims one GPU of a ``tp``-way tensor-parallel deployment runs: query heads divided by ``tp``."""
        if tp < 1 or self.dims.num_q_heads % tp:
            raise UsageError(f"--tp {tp} does not divide {self.name}'s {self.dims.num_q_heads} query heads")
        d = self.dims
        return MLADims(self.name, tp, d.num_q_heads // tp, d.kv_lora_rank, d.qk_rope_head_dim,
                       d.qk_nope_head_dim, d.v_head_dim, d.q_lora_rank)


def load_models(path: Path | None = None) -> dict[str, ModelPreset]:
    path = path or search_spaces_dir() / "models.yaml"
    data = _yaml.check_keys(path, "", _yaml.load(path), ["schema_version", "models"])
    presets: dict[str, ModelPreset] = {}
    for name, raw in _yaml.expect(path, "models", data["models"], dict, "a mapping").items():
        where = f"models.{name}"
        raw = _yaml.check_keys(path, where, raw, _DIM_KEYS, ("description", "aliases", "q_lora_rank"))
        vals = {k: _yaml.expect(path, f"{where}.{k}", raw[k], int, "a positive integer") for k in _DIM_KEYS}
        for k, v in vals.items():
            if v <= 0:
                raise DataFileError(str(path), f"{where}.{k}", f"must be positive, got {v}")
        q_lora = raw.get("q_lora_rank")
        if q_lora is not None:
            _yaml.expect(path, f"{where}.q_lora_rank", q_lora, int, "an integer or null")
        aliases = tuple(raw.get("aliases") or ())
        presets[name] = ModelPreset(name, str(raw.get("description", "")),
                                    MLADims(name, 1, q_lora_rank=q_lora, **vals), aliases)
    return presets


def get_model(name: str, tp: int = 1, path: Path | None = None) -> MLADims:
    """The MLA dims of preset ``name`` (or an alias) at tensor parallelism ``tp``."""
    presets = load_models(path)
    for preset in presets.values():
        if name == preset.name or name in preset.aliases:
            return preset.at_tp(tp)
    valid = [n for p in presets.values() for n in (p.name, *p.aliases)]
    raise UnknownNameError("model", name, valid)
