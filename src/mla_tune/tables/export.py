"""Writing and reading tuning tables and other result files: deterministic YAML/JSON, written atomically."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import yaml

from .. import _yaml, batch_spec
from .._yaml import short
from ..errors import BatchSpecError, DataFileError, MlaTuneError, UsageError
from ..knobs import BACKENDS, check_params
from ..study.plan import KV_CACHE_DTYPES
from ..space import SearchSpace
from ..space_auto import AUTO, BACKEND, split_config
from ..batch_spec import parse as bounded_shape
from .consistency import check_entry
from .table import AUTO_TABLE_SCHEMA_VERSION, SCHEMA_VERSIONS, TABLE_KIND
from ..types import Shape
from ..vllm_adapters import Adapter, recorded_adapter

HEADER = ("# mla-tune tuning table: vLLM MLA attention settings measured per batch shape.\n"
          "# Entries with tuned: false keep vLLM's defaults (no gain beyond noise). See provenance for the source.\n")


class _Dumper(yaml.SafeDumper):
    """Block style, no anchors: a table diffs cleanly and reads without YAML knowledge."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=120,
                     allow_unicode=True)


def check_output_path(path: Path) -> None:
    """``path`` can be written as a file: not a directory or other non-file, under folders that are folders."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise UsageError(f"cannot write {path}: it is {'a directory' if stat.S_ISDIR(mode) else 'not a regular file'}",
                         hint="give a file name")
    parent = Path(os.path.abspath(path)).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: {parent} is not a directory")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half of it."""
    path = Path(path)
    check_output_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise MlaTuneError(f"cannot write {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            # mkstemp makes the file 0600: give it the mode any new file gets here (tables and profiles are
            # shared with the serving hosts, reports with people)
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_table(table: dict[str, Any], path: Path) -> Path:
    """Write ``table``, checked first as ``load_table`` will read it: a table mla-tune would refuse is not written."""
    text = HEADER + dump_yaml(table)
    try:
        check_table(path, _yaml.parse(str(path), text))
    except DataFileError as e:
        raise MlaTuneError(f"not writing {path}: {e.key}: {e.reason}") from None
    return write_atomic(path, text)


def load_table(path: Path) -> dict[str, Any]:
    """Read a tuning table, every value checked once (types, bounds, knobs of its backend); a file that is not
    one says which key is wrong, in one line. Callers may then read its entries by key."""
    return check_table(path, _yaml.load(Path(path), SCHEMA_VERSIONS))


def check_table(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (parsed from ``path``) if it is a valid tuning table, else a ``DataFileError`` naming the key."""
    if data.get("kind") != TABLE_KIND:
        raise DataFileError(str(path), "kind", f"is {short(data.get('kind'))}, expected {TABLE_KIND!r}")
    _yaml.check_keys(path, "", data, _TABLE_KEYS)
    _check_model(path, data["model"])
    _check_provenance(path, data["provenance"])
    entries = _yaml.expect(path, "entries", data["entries"], list, "a list of entries")
    for i, entry in enumerate(entries):  # the shape of every entry first, then its values
        entry = _yaml.check_keys(path, f"entries[{i}]", entry, ("tuned", "trials"), _ENTRY_OPTIONAL)
        if ("shape" in entry) == ("workload" in entry):
            raise DataFileError(str(path), f"entries[{i}]", "needs a shape or a workload (a mix entry), not both")
    check = _TableCheck(Path(path), _check_header(path, data), recorded_adapter(data["provenance"].get("vllm")))
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        label = check.entry(f"entries[{i}]", entry)
        if label in seen:
            raise DataFileError(str(path), f"entries[{i}]", f"{label} is also entries[{seen[label]}]: one entry "
                                "per shape or workload")
        seen[label] = i
    return data


def _check_model(path: Path, model: Any) -> None:
    model = _yaml.check_keys(path, "model", model, ("model", "tp", "num_q_heads"), _MODEL_OPTIONAL)
    _name(path, "model.model", model["model"])
    _yaml.integer(path, "model.tp", model["tp"], high=1024)
    for key in ("num_q_heads", *_MODEL_OPTIONAL):
        if key in model and not (key == "q_lora_rank" and model[key] is None):
            _yaml.integer(path, f"model.{key}", model[key], high=1 << 20)


def _check_provenance(path: Path, prov: Any) -> None:
    prov = _yaml.check_keys(path, "provenance", prov, ("runner", "gpu"), _PROVENANCE_OPTIONAL)
    _name(path, "provenance.runner", prov["runner"])
    gpu = _yaml.check_keys(path, "provenance.gpu", prov["gpu"], ("name", "compute_capability", "sm_count"))
    _name(path, "provenance.gpu.name", gpu["name"])
    _name(path, "provenance.gpu.compute_capability", gpu["compute_capability"])
    _yaml.integer(path, "provenance.gpu.sm_count", gpu["sm_count"], high=1 << 16)
    for key in _PROVENANCE_OPTIONAL:
        if key != "extra" and prov.get(key) is not None:
            _yaml.expect(path, f"provenance.{key}", prov[key], str, "a string")
    for key, value in _yaml.expect(path, "provenance.extra", prov.get("extra") or {}, dict, "a mapping").items():
        _yaml.expect(path, f"provenance.extra.{key}", value, (str, int, float, bool), "a string or number")


def _check_header(path: Path, data: dict[str, Any]) -> str:
    """The table-wide values; returns the backend."""
    version = data["schema_version"]
    if version not in SCHEMA_VERSIONS or isinstance(version, bool):
        raise DataFileError(str(path), "schema_version", f"is {short(version)}; this mla-tune reads "
                            f"{', '.join(map(str, SCHEMA_VERSIONS))}")
    backend = _name(path, "backend", data["backend"])
    if backend not in BACKENDS and backend != AUTO:
        raise DataFileError(str(path), "backend", f"unknown backend {backend!r}; known: "
                            f"{', '.join((*BACKENDS, AUTO))}")
    if backend == AUTO and version < AUTO_TABLE_SCHEMA_VERSION:
        raise DataFileError(str(path), "schema_version", f"is {version}, but a backend: auto table is version "
                            f"{AUTO_TABLE_SCHEMA_VERSION} or later")
    if data["kv_cache_dtype"] not in KV_CACHE_DTYPES:
        raise DataFileError(str(path), "kv_cache_dtype", f"is {short(data['kv_cache_dtype'])}; known: "
                            f"{', '.join(KV_CACHE_DTYPES)}")
    if data["block_size"] is not None:
        _yaml.integer(path, "block_size", data["block_size"], high=1 << 20)
    if data["objective"] not in _OBJECTIVES:
        raise DataFileError(str(path), "objective", f"is {short(data['objective'])}; known: "
                            f"{', '.join(_OBJECTIVES)}")
    for i, w in enumerate(_yaml.expect(path, "workloads", data["workloads"], list, "a list of workload names")):
        _name(path, f"workloads[{i}]", w)
    return backend


def _name(path: Path, key: str, value: Any) -> str:
    if not _yaml.expect(path, key, value, str, "a string").strip() or len(value) > 200:
        raise DataFileError(str(path), key, f"is {short(value)}, expected a non-empty name")
    return value


class _TableCheck:
    """The values of one table's entries, against its backend's knobs (``auto``: each config's own backend's)."""

    def __init__(self, path: Path, backend: str, adapter: Adapter) -> None:
        self.path, self.backend, self.adapter = path, backend, adapter
        self._spaces: dict[str, SearchSpace] = {}

    def space(self, backend: str) -> SearchSpace:
        """Serving prices values within it (flags, deploy resolve with it); as the table's vLLM graphs it."""
        if backend not in self._spaces:
            self._spaces[backend] = self.adapter.search_space(backend)
        return self._spaces[backend]

    def entry(self, where: str, e: dict[str, Any]) -> str:
        """Checks ``e``; returns its label (shape, or mix:workload)."""
        p = self.path
        _yaml.expect(p, f"{where}.tuned", e["tuned"], bool, "true or false")
        trials = _yaml.check_keys(p, f"{where}.trials", e["trials"], (), ("measured", "failed", "reused"))
        for k, v in trials.items():
            _yaml.integer(p, f"{where}.trials.{k}", v, low=0)
        if "shape" in e:
            n, label = None, self.shape_entry(where, e)
        else:
            n, label = self.mix_entry(where, e)
        for key in ("params", "default_params"):
            if key in e:
                self.configs(f"{where}.{key}", e[key], n)
        for key in ("note", "error"):
            if key in e:
                _yaml.expect(p, f"{where}.{key}", e[key], str, "a string")
        if "latency_ms" in e:
            ms = _yaml.check_keys(p, f"{where}.latency_ms", e["latency_ms"], ("default", "best"))
            for k, v in ms.items():
                _yaml.number(p, f"{where}.latency_ms.{k}", v, high=_yaml.MAX_MS)
        if "samples" in e:
            samples = _yaml.check_keys(p, f"{where}.samples", e["samples"], (), ("default", "best"))
            for k, v in samples.items():
                _yaml.integer(p, f"{where}.samples.{k}", v, low=0)
        self.verdict(where, e)
        if "best_candidate" in e:
            best = _yaml.check_keys(p, f"{where}.best_candidate", e["best_candidate"],
                                    ("params", "latency_ms", "speedup"), ("ci", "ci_level"))
            self.configs(f"{where}.best_candidate.params", best["params"], n)
            _yaml.number(p, f"{where}.best_candidate.latency_ms", best["latency_ms"], high=_yaml.MAX_MS)
            self.verdict(f"{where}.best_candidate", best)
        self.required(where, e)
        self.same_knobs(where, e)
        check_entry(p, where, label, e)
        return label

    def shape_entry(self, where: str, e: dict[str, Any]) -> str:
        p = self.path
        spec = _yaml.expect(p, f"{where}.shape", e["shape"], str, "a batch spec string")
        shape = self.spec(f"{where}.shape", spec)
        if "kind" in e and e["kind"] != batch_spec.classify(shape):
            raise DataFileError(str(p), f"{where}.kind", f"is {short(e['kind'])}, but {spec} is a "
                                f"{batch_spec.classify(shape)} batch")
        if "shapes" in e:
            raise DataFileError(str(p), f"{where}.shapes", "only a mix entry (with a workload) has shapes")
        for i, point in enumerate(_yaml.expect(p, f"{where}.landscape", e.get("landscape") or [], list,
                                               "a list of {params, trial_ms}")):
            point = _yaml.check_keys(p, f"{where}.landscape[{i}]", point, ("params", "trial_ms"))
            self.params(f"{where}.landscape[{i}].params", point["params"])
            _yaml.number(p, f"{where}.landscape[{i}].trial_ms", point["trial_ms"], high=_yaml.MAX_MS)
        return spec

    def mix_entry(self, where: str, e: dict[str, Any]) -> tuple[int, str]:
        p = self.path
        workload = _name(p, f"{where}.workload", e["workload"])
        for key in ("kind", "landscape"):
            if key in e:
                raise DataFileError(str(p), f"{where}.{key}", "only a shape entry has one; this is a mix entry")
        if "shapes" not in e:
            raise DataFileError(str(p), f"{where}.shapes", "missing: a mix entry lists its shapes")
        shapes = _yaml.expect(p, f"{where}.shapes", e["shapes"], list, "a list of {spec, weight}")
        if not shapes:
            raise DataFileError(str(p), f"{where}.shapes", "empty")
        for i, s in enumerate(shapes):
            s = _yaml.check_keys(p, f"{where}.shapes[{i}]", s, ("spec", "weight"))
            self.spec(f"{where}.shapes[{i}].spec", _yaml.expect(p, f"{where}.shapes[{i}].spec", s["spec"], str,
                                                                "a batch spec string"))
            _yaml.number(p, f"{where}.shapes[{i}].weight", s["weight"], high=_yaml.MAX_WEIGHT)
        return len(shapes), f"mix:{workload}"

    def spec(self, key: str, spec: str) -> Shape:
        try:
            shape = bounded_shape(spec)
        except BatchSpecError as err:
            raise DataFileError(str(self.path), key, str(err)) from None
        if batch_spec.format(shape) != spec:
            raise DataFileError(str(self.path), key, f"write {spec!r} as {batch_spec.format(shape)!r}, the one "
                                "name of that batch")
        return shape

    def configs(self, key: str, value: Any, n: int | None) -> None:
        """One config (a shape entry) or a list of ``n`` configs (a mix entry, one per shape)."""
        if n is None:
            self.params(key, value)
            return
        if not isinstance(value, list) or len(value) != n:
            raise DataFileError(str(self.path), key, f"expected a list of {n} configs, one per shape of the mix")
        for i, config in enumerate(value):
            self.params(f"{key}[{i}]", config)

    def backend_of(self, key: str, config: dict[str, Any]) -> str:
        """The decode backend ``config`` runs on: the table's, or (``auto``) the one it names."""
        if self.backend != AUTO:
            return self.backend
        named = config.get(BACKEND)
        if named not in BACKENDS:
            raise DataFileError(str(self.path), f"{key}.{BACKEND}", f"is {short(named)}: a config of an auto table "
                                f"names its decode backend ({', '.join(BACKENDS)})")
        return str(named)

    def params(self, key: str, value: Any) -> None:
        _yaml.expect(self.path, key, value, dict, f"a mapping of {self.backend} parameters")
        backend = self.backend_of(key, value)
        value = split_config(self.backend, value)[1]  # an auto config's other keys are its backend's knobs
        space = self.space(backend)
        for name, v in value.items():
            problems = check_params(backend, {str(name): v}) if isinstance(name, str) else ["not a name"]
            if not problems and name in space and not space[name].contains(v):
                values = space[name].values()
                problems = [f"{name}={short(v)} is outside the {backend} search space "
                            f"({', '.join(map(str, values[:12]))}{' ...' if len(values) > 12 else ''})"]
            if problems:
                raise DataFileError(str(self.path), f"{key}.{short(name) if not isinstance(name, str) else name}",
                                    problems[0])

    def same_knobs(self, where: str, e: dict[str, Any]) -> None:
        """Every config of an entry sets the knobs its ``default_params`` set (serving compares them by name)."""
        if "default_params" not in e:
            return
        listed = isinstance(e["default_params"], list)
        defaults = e["default_params"] if listed else [e["default_params"]]
        others = [("params", e.get("params")), ("best_candidate.params", (e.get("best_candidate") or {}).get("params"))]
        others += [(f"landscape[{i}].params", x["params"]) for i, x in enumerate(e.get("landscape") or [])]
        for key, configs in others:
            if configs is None:
                continue
            for i, (config, default) in enumerate(zip(configs if listed else [configs], defaults)):
                if self.backend == AUTO and config.get(BACKEND) != default.get(BACKEND):  # another backend's knobs
                    default = {BACKEND: None, **dict.fromkeys(self.space(self.backend_of(key, config)).names)}
                if set(config) != set(default):
                    name = sorted(set(config) ^ set(default))[0]
                    at = f"{where}.{key}{f'[{i}]' if listed else ''}.{name}"
                    raise DataFileError(str(self.path), at, f"{'missing' if name in default else 'unexpected'}: an "
                                        f"entry's configs set the knobs of its default_params "
                                        f"({', '.join(sorted(default))})")

    def verdict(self, where: str, e: dict[str, Any]) -> None:
        """``speedup`` a finite positive number; ``ci`` two finite numbers 0 <= low <= high at a level in (0, 1)."""
        p = self.path
        if "speedup" in e:
            _yaml.number(p, f"{where}.speedup", e["speedup"], high=_yaml.MAX_RATIO)
        if "ci" in e:
            ci = e["ci"]
            if not isinstance(ci, list) or len(ci) != 2:
                raise DataFileError(str(p), f"{where}.ci", f"is {short(ci)}, expected [low, high]")
            low = _yaml.number(p, f"{where}.ci[0]", ci[0], low_open=False, high=_yaml.MAX_RATIO)
            high = _yaml.number(p, f"{where}.ci[1]", ci[1], low_open=False, high=_yaml.MAX_RATIO)
            if low > high:
                raise DataFileError(str(p), f"{where}.ci", f"low {low:g} is above high {high:g}")
        if "ci_level" in e:
            _yaml.number(p, f"{where}.ci_level", e["ci_level"], high=1)

    def required(self, where: str, e: dict[str, Any]) -> None:
        """What serving reads of a tuned entry is there; a failed shape is never tuned."""
        if e["tuned"] and "error" in e:
            raise DataFileError(str(self.path), f"{where}.tuned", "is true, but the entry records an error")
        if e["tuned"]:
            for key in ("params", "default_params", "latency_ms", "speedup"):
                if key not in e:
                    raise DataFileError(str(self.path), f"{where}.{key}", "missing: a tuned entry records it")


_TABLE_KEYS = ("kind", "schema_version", "provenance", "backend", "model", "kv_cache_dtype", "block_size",
               "objective", "workloads", "entries")
_MODEL_OPTIONAL = ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "q_lora_rank")
_PROVENANCE_OPTIONAL = ("driver", "cuda", "torch", "vllm", "mla_tune", "recorded", "extra", "date")
_ENTRY_OPTIONAL = ("shape", "kind", "workload", "shapes", "params", "default_params", "note", "error", "latency_ms",
                   "speedup", "ci", "ci_level", "samples", "best_candidate", "landscape")
_OBJECTIVES = ("per-shape", "mix", "mix+per-shape")
