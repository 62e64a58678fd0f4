"""Each study's plots attached to it as Optuna artifacts, so that optuna-dashboard shows them beside its trials.

After ``mla-tune study`` finishes, every confirmed study gets the pictures ``mla-tune plot`` draws for it: the bars
of its shape's configs with the confirmed interval, and the heatmaps of its GPU, model and backend. They are kept
in an Optuna ``FileSystemArtifactStore`` next to the storage (``<journal>.artifacts/``) and shown by
``optuna-dashboard <journal> --artifact-dir <journal>.artifacts``. A study whose confirmation is what its plots
already show is left alone, and a redrawn picture replaces the old one in place. Drawing needs matplotlib (the
``plot`` extra); without it, or for a database server (no folder of its own), nothing is attached.
"""

from __future__ import annotations

import hashlib
import importlib.util
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..paths import join_inside, safe_component
from ..records import ATTRS_KEY, Confirmation, StudyName
from ..storage.urls import StorageSpec, artifact_dir, attach_file, open_storage, parse_storage, storage_file

PLOTS_MARK = "mla_tune:plots"  # study system attr: which confirmations the attached plots show
_SEEN = ".journal-seen"  # in the artifact folder: the storage file's size and mtime when it was last looked at


@dataclass(frozen=True)
class Attached:
    """What ``attach_plots`` did: the folder, the studies that got new pictures, or why none could."""

    storage: str  # as shown to people (a URL's password hidden)
    directory: Path | None
    studies: tuple[str, ...] = ()
    pictures: int = 0
    skipped: str | None = None


def attach_plots(storage: str | None = None, only: Callable[[str, dict[str, Any]], bool] | None = None) -> Attached:
    """Draw and attach the plots of the confirmed studies of ``storage`` whose plots are missing or out of date;
    with ``only(name, attrs)``, of those it accepts (``run_studies`` makes one for a study command)."""
    spec = parse_storage(storage)
    directory = artifact_dir(spec)
    if directory is None:
        return Attached(spec.display, None, skipped="a database server has no folder for artifacts")
    if not can_draw():
        return Attached(spec.display, directory, skipped="drawing needs matplotlib: pip install 'mla-tune[plot]'")
    if _seen(directory) == _file_state(spec):
        return Attached(spec.display, directory)  # nothing was written to the storage since it was last looked at
    store = open_storage(spec, create=False)
    marks = _marks(store, only or (lambda name, attrs: True))
    stale = {name for name, (mark, attached, wanted) in marks.items() if wanted and mark not in (None, attached)}
    groups = {_group(n) for n in stale}
    done: list[str] = []
    pictures = 0
    if stale:
        from ..tables.summary import load_summaries

        summaries = load_summaries(store, lambda name, attrs: _group(name) in groups)
        with tempfile.TemporaryDirectory(prefix="mla-tune-plots-") as tmp:
            for group in sorted(groups):
                members = [s for s in summaries if _group(s.name) == group]
                for name, files in _draw(members, stale, Path(tmp)):
                    for path in files:
                        attach_file(store, name, path, directory)
                    store.set_study_system_attr(store.get_study_id_from_name(name), PLOTS_MARK, marks[name][0])
                    done.append(name)
                    pictures += len(files)
    _remember(spec, directory)
    return Attached(spec.display, directory, tuple(done), pictures)


def run_studies(backend: Any, workload: Any, model: str | None = None, tp: int | None = None,
                kv_cache_dtype: str | None = None) -> Callable[[str, dict[str, Any]], bool]:
    """Which stored studies a study command ran: its backends, its workloads' shapes (or their ``mix:`` study),
    its model, TP and KV dtype (each a value or a list of them; None for any)."""
    from ..models import get_model
    from ..workloads import get_workload

    def many(x: Any) -> list[Any] | None:
        return None if x is None else [x] if isinstance(x, (str, int)) else list(x)

    backends, kv = many(backend), many(kv_cache_dtype)
    model = None if model is None else get_model(model).model  # an alias (deepseek-r1) stored as its preset
    labels = None
    if workload is not None:
        labels = set()
        for w in many(workload) or []:
            wl = get_workload(str(w))
            labels.update([*wl.specs, f"mix:{wl.name}"])

    def wanted(name: str, attrs: dict[str, Any]) -> bool:
        n, m = StudyName.parse(name), attrs.get("model") or {}
        return ((backends is None or n.backend in backends) and (labels is None or n.label in labels)
                and (model is None or m.get("model") == model) and (tp is None or m.get("tp") in many(tp))
                and (kv is None or attrs.get("kv_cache_dtype") in kv))

    return wanted


def can_draw() -> bool:
    """Whether matplotlib is installed (the ``plot`` extra), without importing it."""
    return importlib.util.find_spec("matplotlib") is not None


def _group(name: str) -> tuple[str, str, str]:
    n = StudyName.parse(name)
    return n.gpu, n.model, n.backend


def _marks(store: Any, only: Callable[[str, dict[str, Any]], bool]) -> dict[str, tuple[str | None, str | None, bool]]:
    """Per mla-tune study: the mark its plots should carry (its group's confirmations; None while unconfirmed),
    the mark they carry, and whether ``only`` wants it."""
    studies = [s for s in store.get_all_studies() if ATTRS_KEY in s.user_attrs]
    stamps: dict[tuple[str, str, str], list[str]] = {}
    for s in studies:
        conf = Confirmation.of_study(s.user_attrs)
        if conf is not None:
            stamps.setdefault(_group(s.study_name), []).append(f"{s.study_name} {conf.date} {conf.trials}")
    out = {}
    for s in studies:
        confirmed = Confirmation.of_study(s.user_attrs) is not None
        group = "\n".join(sorted(stamps.get(_group(s.study_name), [])))
        mark = hashlib.sha256(group.encode()).hexdigest()[:16] if confirmed else None
        out[s.study_name] = (mark, s.system_attrs.get(PLOTS_MARK), only(s.study_name, s.user_attrs[ATTRS_KEY]))
    return out


def _draw(members: list[Any], stale: set[str], tmp: Path) -> Iterable[tuple[str, list[Path]]]:
    """The picture files of each stale study of one group, drawn once per group as ``mla-tune plot`` draws its
    table: the page of per-shape bars that holds the study's shape, then the heatmaps."""
    from .plotdata import shape_bars
    from .plots import SHAPES_PER_PAGE, pictures

    whole = _landscape(members, tmp)
    if whole is None:
        return
    drawn = pictures(whole)
    for p in drawn:
        join_inside(tmp, p.name).write_bytes(p.png)
    heatmaps = [join_inside(tmp, p.name) for p in drawn if "-heatmap-" in p.name]
    pages = [join_inside(tmp, p.name) for p in drawn if "-heatmap-" not in p.name]
    page_of = {b.label: i // SHAPES_PER_PAGE for i, b in enumerate(shape_bars(whole))}
    for s in members:
        if s.name in stale:
            page = page_of.get(StudyName.parse(s.name).label)
            yield s.name, ([pages[page]] if page is not None and page < len(pages) else []) + heatmaps


def _landscape(members: list[Any], tmp: Path) -> Any:
    """The group as ``plot`` reads a table: its tuning table, written and read back (validated) like an export."""
    from ..tables.export import write_table
    from ..tables.landscape_io import read_table
    from ..tables.table import build_table

    try:
        table = build_table(members)
    except UsageError:  # studies of one name group measured with different software: nothing to draw together
        return None
    first = StudyName.parse(members[0].name)
    path = join_inside(tmp, safe_component(f"{first.backend}-{first.model}") + ".yaml")  # names from the storage
    return read_table(write_table(table, path))


def _file_state(spec: StorageSpec) -> str | None:
    path = storage_file(spec)
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return None if st is None else f"{st.st_size} {st.st_mtime_ns}"


def _seen(directory: Path) -> str | None:
    try:
        return (directory / _SEEN).read_text().strip()
    except OSError:
        return None


def _remember(spec: StorageSpec, directory: Path) -> None:
    state = _file_state(spec)
    if state is not None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / _SEEN).write_text(state + "\n")


__all__ = ["PLOTS_MARK", "Attached", "attach_plots", "can_draw", "run_studies"]
