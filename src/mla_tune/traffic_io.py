"""Reading traffic files (YAML or CSV) into ``Traffic`` records: the shapes a deployment serves, with weights.

Below ``workloads`` (a traffic file is a workload too: ``--traffic FILE``, ``--workload traffic:FILE``), so it
imports nothing of the named workloads; ``traffic`` builds on both. The file format is described there.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from . import _yaml, batch_spec
from .errors import DataFileError, MlaTuneError

TRAFFIC_KIND = "mla-tune/traffic"
MAX_SHAPES = 10_000
MAX_BYTES = 4 << 20


@dataclass(frozen=True)
class Traffic:
    weights: tuple[tuple[str, float], ...]  # (canonical batch spec, weight), in file order
    source: str

    def weight(self, spec: str) -> float:
        return dict(self.weights).get(spec, 0.0)

    @property
    def specs(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.weights)


def _entry(path: Path, where: str, spec: object, weight: object) -> tuple[str, float]:
    if not isinstance(spec, str):
        raise DataFileError(str(path), f"{where}.spec", f"expected a batch spec, got {_yaml.short(spec)}")
    try:
        canonical = batch_spec.format(batch_spec.parse(spec))
    except MlaTuneError as e:
        raise DataFileError(str(path), f"{where}.spec", str(e)) from None
    try:
        w = float(weight)  # type: ignore[arg-type]
    except OverflowError:  # an int of hundreds of digits
        w = math.inf
    except (TypeError, ValueError):
        raise DataFileError(str(path), f"{where}.weight", f"expected a number, got {_yaml.short(weight)}") from None
    if isinstance(weight, bool) or not math.isfinite(w) or w <= 0:
        raise DataFileError(str(path), f"{where}.weight", f"must be a finite number > 0, got {_yaml.short(weight)}")
    if w > _yaml.MAX_WEIGHT:
        raise DataFileError(str(path), f"{where}.weight", f"is {_yaml.short(weight)}: at most {_yaml.MAX_WEIGHT:g}")
    return canonical, w


def _merge(path: Path, entries: list[tuple[str, float]]) -> Traffic:
    if not entries:
        raise DataFileError(str(path), "shapes", "no shapes")
    if len(entries) > MAX_SHAPES:
        raise DataFileError(str(path), "shapes", f"{len(entries)} shapes; at most {MAX_SHAPES}")
    merged: dict[str, float] = {}
    for spec, w in entries:
        merged[spec] = merged.get(spec, 0.0) + w
    return Traffic(tuple(merged.items()), str(path))


def load_traffic(path: Path) -> Traffic:
    """Read a YAML or CSV traffic file (by suffix: ``.csv`` is CSV, anything else YAML)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(str(path), "", "not a regular file")
    if path.stat().st_size > MAX_BYTES:
        raise DataFileError(str(path), "", f"larger than {MAX_BYTES >> 20} MiB")
    if path.suffix.lower() == ".csv":
        return _merge(path, _csv_entries(path))
    data = _yaml.check_keys(path, "", _yaml.load(path), ["schema_version", "shapes"], ["kind", "description"])
    if data.get("kind", TRAFFIC_KIND) != TRAFFIC_KIND:
        raise DataFileError(str(path), "kind", f"is {data['kind']!r}, expected {TRAFFIC_KIND!r}")
    shapes = _yaml.expect(path, "shapes", data["shapes"], list, "a list of {spec, weight}")
    entries = []
    for i, raw in enumerate(shapes):
        raw = _yaml.check_keys(path, f"shapes[{i}]", raw, ["spec"], ["weight"])
        entries.append(_entry(path, f"shapes[{i}]", raw["spec"], raw.get("weight", 1)))
    return _merge(path, entries)


def _csv_entries(path: Path) -> list[tuple[str, float]]:
    try:
        text = _yaml.decode_text(str(path), _yaml.read_bytes(path, what="a traffic file"), "a traffic file")
        reader = csv.DictReader(text.splitlines())
        header = reader.fieldnames
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataFileError(str(path), "", f"not a CSV file: {e}") from None
    if header is not None and set(header) != {"spec", "weight"}:
        raise DataFileError(str(path), "header", f"expected columns spec,weight, got {','.join(header)}")
    entries = []
    for i, r in enumerate(rows):
        if None in r:  # DictReader files the values beyond the header's columns under None
            raise DataFileError(str(path), f"row {i + 2}", f"{2 + len(r[None])} values; expected 2 (spec,weight)")
        entries.append(_entry(path, f"row {i + 2}", r["spec"], r["weight"]))
    return entries


__all__ = ["MAX_BYTES", "MAX_SHAPES", "TRAFFIC_KIND", "Traffic", "load_traffic"]
