"""Workloads: lists of batch shapes with weights, named (``search_spaces/workloads.yaml``) or given ad hoc.

Three spellings, everywhere a workload is asked for (``study``, ``sweep``, ``export``, ``show``, ``deploy``):

- a name from workloads.yaml: ``decode_4k``;
- ``spec:`` and shapes in the batch-spec grammar, each with an optional relative weight after ``@`` (default 1),
  separated by commas: ``spec:64q1s4k``, ``spec:8q1s4k@0.7,256q1s4k@0.3`` (``parse_shapes``/``format_shapes``,
  ``parse_shapes(format_shapes(x)) == x``);
- ``traffic:FILE``, a traffic file (YAML or CSV, as ``deploy --traffic`` reads): its shapes with its weights.

Weights matter where shapes are summed (``--objective mix``, ``deploy``); a per-shape study measures each shape.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import _yaml, batch_spec
from .data import search_spaces_dir
from .errors import BatchSpecError, DataFileError, UnknownNameError
from .traffic_io import load_traffic
from .types import Shape

SPEC_PREFIX, TRAFFIC_PREFIX = "spec:", "traffic:"
MAX_LIST_CHARS = 192  # a list's canonical text: it names its mix study, and tables keep names under 200
MAX_LIST_SHAPES = 64  # counted before anything is parsed; each shape's text is bounded by batch_spec
_WEIGHT = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


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


def _weight(text: str, item: str, raw: str) -> float:
    number = float(raw) if _WEIGHT.fullmatch(raw) else math.nan
    if not (math.isfinite(number) and number > 0):
        raise BatchSpecError(text, item, f"weight {raw!r} is not a number > 0 (e.g. 64q1s4k@0.7)")
    return number


def parse_shapes(text: str) -> tuple[WorkloadShape, ...]:
    """``8q1s4k@0.7,256q1s4k@0.3`` -> shapes with weights (canonical specs, default weight 1, in order).

    Raises ``BatchSpecError`` naming the item: an empty one, a bad spec or weight, a shape given twice."""
    if text.count(",") >= MAX_LIST_SHAPES:
        raise BatchSpecError(text[:40] + "...", text[:40] + "...", f"more than {MAX_LIST_SHAPES} shapes; put them "
                             "in a traffic file (--traffic FILE)")
    shapes: list[WorkloadShape] = []
    for item in text.split(","):
        spec, at, raw = (part.strip() for part in item.partition("@"))
        if not spec:
            raise BatchSpecError(text, item, "empty shape (shapes are separated by single commas)")
        shape = batch_spec.parse(spec)
        canonical = batch_spec.format(shape)
        if any(s.spec == canonical for s in shapes):
            raise BatchSpecError(text, item, f"shape {canonical} is given twice (add its weights up instead)")
        shapes.append(WorkloadShape(canonical, shape, _weight(text, item, raw) if at else 1.0))
    if len(shapes) > 1 and len(format_shapes(shapes)) > MAX_LIST_CHARS:
        raise BatchSpecError(text[:40] + "...", text[:40] + "...", f"more than {MAX_LIST_CHARS} characters of "
                             "shapes; put them in a traffic file (--traffic FILE)")
    return tuple(shapes)


def _weight_text(w: float) -> str:
    return str(int(w)) if w.is_integer() and abs(w) < 1e15 else repr(w)


def format_shapes(shapes: Iterable[WorkloadShape]) -> str:
    """The canonical text of shapes with weights: ``parse_shapes(format_shapes(x)) == x``; weight 1 is implied."""
    return ",".join(s.spec if s.weight == 1 else f"{s.spec}@{_weight_text(s.weight)}" for s in shapes)


def _traffic_workload(path: str) -> Workload:
    """A traffic file as a workload named ``traffic:<file stem>`` (names hold no ``/``: they end study names)."""
    flow = load_traffic(Path(path))
    shapes = tuple(WorkloadShape(spec, batch_spec.parse(spec), weight) for spec, weight in flow.weights)
    return Workload(f"{TRAFFIC_PREFIX}{Path(path).stem}", f"traffic file {path}", shapes)


def get_workload(name: str, path: Path | None = None) -> Workload:
    """A named workload, shapes given as ``spec:64q1s4k`` or ``spec:8q1s4k@3,256q1s4k@1``, or a traffic file
    given as ``traffic:FILE``."""
    if name.startswith(SPEC_PREFIX):
        shapes = parse_shapes(name[len(SPEC_PREFIX):])
        return Workload(f"{SPEC_PREFIX}{format_shapes(shapes)}", "shapes given on the command line", shapes)
    if name.startswith(TRAFFIC_PREFIX):
        return _traffic_workload(name[len(TRAFFIC_PREFIX):])
    workloads = load_workloads(path)
    if name not in workloads:
        e = UnknownNameError("workload", name, workloads)
        e.hint = _spec_hint(name)
        raise e
    return workloads[name]


def _spec_hint(name: str) -> str | None:
    """``64q1s4k`` is a batch spec, not a workload name: say how to give it."""
    try:
        parse_shapes(name)
    except BatchSpecError:
        return None
    return f"batch shapes are given as {SPEC_PREFIX}{name}"
