"""Writing and reading tuning tables and other result files: deterministic YAML/JSON, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from . import _yaml
from .errors import DataFileError, MlaTuneError
from .table import TABLE_KIND

HEADER = ("# mla-tune tuning table: vLLM MLA attention settings measured per batch shape.\n"
          "# Entries with tuned: false keep vLLM's defaults (no gain beyond noise). See provenance for the source.\n")


class _Dumper(yaml.SafeDumper):
    """Block style, no anchors: a table diffs cleanly and reads without YAML knowledge."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=120,
                     allow_unicode=True)


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half of it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise MlaTuneError(f"cannot write {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_table(table: dict[str, Any], path: Path) -> Path:
    return write_atomic(path, HEADER + dump_yaml(table))


def load_table(path: Path) -> dict[str, Any]:
    """Read a tuning table; a file that is not one says which key is wrong."""
    data = _yaml.load(Path(path))
    if data.get("kind") != TABLE_KIND:
        raise DataFileError(str(path), "kind", f"is {data.get('kind')!r}, expected {TABLE_KIND!r}")
    _yaml.check_keys(path, "", data, _TABLE_KEYS)
    _yaml.check_keys(path, "model", data["model"], ("model", "tp", "num_q_heads"), _MODEL_OPTIONAL)
    prov = _yaml.check_keys(path, "provenance", data["provenance"], ("runner", "gpu"), _PROVENANCE_OPTIONAL)
    _yaml.check_keys(path, "provenance.gpu", prov["gpu"], ("name", "compute_capability", "sm_count"))
    _yaml.expect(path, "entries", data["entries"], list, "a list of entries")
    for i, entry in enumerate(data["entries"]):
        where = f"entries[{i}]"
        entry = _yaml.check_keys(path, where, entry, ("tuned", "trials"), _ENTRY_OPTIONAL)
        if "shape" not in entry and "workload" not in entry:
            raise DataFileError(str(path), where, "needs a shape or a workload")
        _yaml.expect(path, f"{where}.tuned", entry["tuned"], bool, "true or false")
    return data


_TABLE_KEYS = ("kind", "schema_version", "provenance", "backend", "model", "kv_cache_dtype", "block_size",
               "objective", "workloads", "entries")
_MODEL_OPTIONAL = ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "q_lora_rank")
_PROVENANCE_OPTIONAL = ("driver", "cuda", "torch", "vllm", "mla_tune", "recorded", "extra", "date")
_ENTRY_OPTIONAL = ("shape", "kind", "workload", "shapes", "params", "default_params", "note", "error", "latency_ms",
                   "speedup", "ci", "ci_level", "samples", "best_candidate", "landscape")
