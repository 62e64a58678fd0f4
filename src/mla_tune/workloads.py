"""Named workloads (``search_spaces/workloads.yaml``): lists of batch shapes with weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import _yaml, batch_spec
from .data import search_spaces_dir
from .errors import BatchSpecError, DataFileError, UnknownNameError
from .types import Shape


@dataclass(frozen=True)
class WorkloadShape:
    spec: str  # canonical batch spec
    shape: Shape
    weight: float = 1.0


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    shapes: tuple[WorkloadShape, ...]

    @property
    def specs(self) -> tuple[str, ...]:
        return tuple(s.spec for s in self.shapes)


def _shape_entry(path: Path, where: str, raw: object) -> WorkloadShape:
    if isinstance(raw, str):
        raw = {"spec": raw}
    raw = _yaml.check_keys(path, where, raw, ["spec"], ["weight"])
    spec = _yaml.expect(path, f"{where}.spec", raw["spec"], str, "a batch spec string")
    try:
        shape = batch_spec.parse(spec)
    except BatchSpecError as e:
        raise DataFileError(str(path), f"{where}.spec", str(e)) from e
    weight = _yaml.expect(path, f"{where}.weight", raw.get("weight", 1.0), (int, float), "a number")
    if weight <= 0:
        raise DataFileError(str(path), f"{where}.weight", f"must be positive, got {weight}")
    return WorkloadShape(batch_spec.format(shape), shape, float(weight))


def load_workloads(path: Path | None = None) -> dict[str, Workload]:
    path = path or search_spaces_dir() / "workloads.yaml"
    data = _yaml.check_keys(path, "", _yaml.load(path), ["schema_version", "workloads"])
    out: dict[str, Workload] = {}
    for name, raw in _yaml.expect(path, "workloads", data["workloads"], dict, "a mapping").items():
        where = f"workloads.{name}"
        raw = _yaml.check_keys(path, where, raw, ["shapes"], ["description"])
        shapes = _yaml.expect(path, f"{where}.shapes", raw["shapes"], list, "a list of shapes")
        if not shapes:
            raise DataFileError(str(path), f"{where}.shapes", "is empty")
        entries = tuple(_shape_entry(path, f"{where}.shapes[{i}]", s) for i, s in enumerate(shapes))
        specs = [e.spec for e in entries]
        if len(set(specs)) != len(specs):
            dup = next(s for s in specs if specs.count(s) > 1)
            raise DataFileError(str(path), f"{where}.shapes", f"shape {dup} appears twice")
        out[name] = Workload(name, str(raw.get("description", "")), entries)
    return out


def get_workload(name: str, path: Path | None = None) -> Workload:
    """A named workload, or an ad-hoc one from a batch spec given as ``spec:64q1s4k``."""
    if name.startswith("spec:"):
        shape = batch_spec.parse(name[len("spec:"):])
        spec = batch_spec.format(shape)
        return Workload(f"spec:{spec}", "one shape given on the command line",
                        (WorkloadShape(spec, shape),))
    workloads = load_workloads(path)
    if name not in workloads:
        raise UnknownNameError("workload", name, workloads)
    return workloads[name]
