"""PNG pictures of landscapes (matplotlib, Agg; imported only inside these functions so the CLI starts fast)."""

from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MlaTuneError, UsageError
from ..paths import join_inside, safe_component
from ..tables.landscape import Landscape
from . import layout
from .plotdata import Heatmap, ShapeBars, heatmaps, shape_bars

SHAPES_PER_PAGE = 12
_DPI = 100
_ZLIB = 6  # zlib's default: level 9 (``optimize``) made the files 9% smaller and took five times as long
# Glyphs as drawn, not snapped to the pixel grid: matplotlib 3.11 runs the font's hinting program for every glyph of
# every text (no cache), a third of a text's cost, and a page of charts is mostly text. At these sizes the
# difference is a shade of anti-aliasing.
_RC = {"text.hinting": "no_hinting"}
_TICK_SIZE = 7  # points: the per-shape charts' tick labels and bar names
_COLORS = {"deployed": "#1b7837", "candidate": "#e08214", "default": "#636363"}


@dataclass(frozen=True)
class Picture:
    name: str  # file name, e.g. H200-FLASH_ATTN_MLA-deepseek-v3-tp1-heatmap-<knob>.png
    title: str
    png: bytes


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UsageError("drawing needs matplotlib, which is not installed here",
                         hint="pip install 'mla-tune[plot]'") from None

    matplotlib.use("Agg", force=True)  # no display, same pixels everywhere
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    """The figure as a 256-colour PNG (a third of the bytes of RGBA; charts have few colours), no version stamp.

    Drawn once, straight into the canvas's pixels: ``savefig`` would draw a figure with a layout engine twice and
    write a PNG only for it to be read back here."""
    fig.canvas.draw()  # runs the layout engine, where there is one, before painting
    image = _indexed(fig.canvas.buffer_rgba(), fig.canvas.get_width_height())
    _pyplot().close(fig)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=_ZLIB)
    return out.getvalue()


def _indexed(rgba: Any, size: tuple[int, int]) -> Any:
    """The pixels in 256 colours: white, most of a chart, kept exact as the last one, and the median-cut palette of
    the other pixels for the rest (quantizing only those takes a third of the time the whole picture would)."""
    import numpy as np
    from PIL import Image

    pixels = np.frombuffer(rgba, dtype=np.uint8).reshape(-1, 4)
    white = np.frombuffer(rgba, dtype=np.uint32) == 0xFFFFFFFF  # opaque white, whatever the byte order
    index = np.full(len(pixels), 255, dtype=np.uint8)
    colours: list[int] = []
    if not white.all():
        rest = np.ascontiguousarray(pixels[~white, :3])
        quantized = Image.frombuffer("RGB", (len(rest), 1), rest, "raw", "RGB", 0, 1).quantize(
            255, dither=Image.Dither.NONE)
        index[~white] = np.frombuffer(quantized.tobytes(), dtype=np.uint8)
        colours = quantized.getpalette()[:255 * 3]
    image = Image.frombuffer("P", size, index, "raw", "P", 0, 1)
    image.putpalette(colours + [0] * (255 * 3 - len(colours)) + [255, 255, 255])
    return image


def _suptitle(ls: Landscape, what: str) -> str:
    replay = " (REPLAYED from recorded samples)" if ls.source.replay else ""
    date = f" · {ls.source.date[:10]}" if ls.source.date else ""
    return f"{ls.backend} · {ls.model} tp{ls.tp}: {what}\n{ls.source.gpu} · vLLM {ls.source.vllm} · " \
           f"runner {ls.source.runner}{date}{replay}"


def pictures(ls: Landscape) -> list[Picture]:
    """The heatmaps (one per knob measured at several values on the decode grid) and the per-shape charts."""
    with _pyplot().rc_context(_RC):
        out = [Picture(_png_name(f"{ls.stem}-heatmap-{h.knob}"), f"{h.knob}: speedup over vLLM's default",
                       heatmap_png(ls, h)) for h in heatmaps(ls)]
        bars = shape_bars(ls)
        pages = [bars[i:i + SHAPES_PER_PAGE] for i in range(0, len(bars), SHAPES_PER_PAGE)]
        for n, page in enumerate(pages, start=1):
            suffix = f"-{n}" if len(pages) > 1 else ""
            out.append(Picture(_png_name(f"{ls.stem}-landscape{suffix}"), "per-shape landscape" + (
                f" ({n}/{len(pages)})" if len(pages) > 1 else ""), landscape_png(ls, page)))
    return out


def _png_name(stem: str) -> str:
    """A picture's file name: built from the inputs' GPU, model and file names, so made safe (never a path)."""
    return safe_component(stem) + ".png"


_TICKS = (0.5, 0.67, 0.8, 0.9, 0.95, 1.0, 1.02, 1.05, 1.1, 1.2, 1.5, 2.0)


def _norm(cells: list[float]) -> Any:
    """Log2 colours, white at x1; each side spans its own data (gains of a few percent stay visible next to
    x0.2 losses), saturated beyond x0.5 and x2."""
    from matplotlib.colors import TwoSlopeNorm

    logs = [math.log2(x) for x in cells if x and x > 0]
    low = max(min(logs + [-0.07]), -1.0)
    high = min(max(logs + [0.07]), 1.0)
    return TwoSlopeNorm(0.0, low, high)


def _spaced_ticks(norm: Any) -> list[float]:
    """Colour-bar ticks from x1 outwards, at least a tenth of the bar apart (the two halves have their own scales)."""
    kept = [1.0]
    for side in (sorted(t for t in _TICKS if t < 1)[::-1], sorted(t for t in _TICKS if t > 1)):
        last = 0.5
        for t in side:
            pos = float(norm(math.log2(t)))
            if 0 <= pos <= 1 and abs(pos - last) >= 0.1:
                kept.append(t)
                last = pos
    return sorted(kept)


def heatmap_png(ls: Landscape, h: Heatmap) -> bytes:
    """Panels three a row, batch size down, log-scaled diverging colours around x1 (beyond x2 / x0.5 saturated)."""
    return _png(_heatmap_figure(ls, h))


def _heatmap_figure(ls: Landscape, h: Heatmap) -> Any:
    plt = _pyplot()

    n = len(h.panels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(max(8.0, cols * (1.2 + 0.8 * len(h.columns)) + 1.6),
                              rows * (1.3 + 0.42 * len(h.rows)) + 1.0), dpi=_DPI)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    norm = _norm([x for p in h.panels for row in p.cells for x in row if x is not None])
    # 65 levels: smooth enough to read, the middle one white (x1), and the 256-colour PNG keeps them all
    cmap = plt.get_cmap("RdBu", 65).with_extremes(bad="#e0e0e0")
    for i, (ax, panel) in enumerate(zip(axes, h.panels)):
        image = _heat_panel(ax, panel, h, norm, cmap)
        if i % cols == 0:
            ax.set_ylabel("batch size (requests)", fontsize=8)
        if i >= n - cols:
            ax.set_xlabel(h.column_title, fontsize=8)
    ticks = _spaced_ticks(norm)
    bar = fig.colorbar(image, cax=fig.add_axes((0, 0, 1, 1)), ticks=[math.log2(t) for t in ticks])
    bar.ax.set_yticklabels([f"{t:g}×" for t in ticks], fontsize=8)
    bar.set_label("speedup over vLLM's default (blue faster, red slower)", fontsize=8)
    title = fig.suptitle(_suptitle(ls, f"speedup over vLLM's default by {h.knob}\none-token decode, the other knobs "
                                       f"at vLLM's defaults ({h.knob} default: {h.default}); n/m: not measured"),
                         fontsize=10, y=1 - layout.PAD / fig.get_figheight(), va="top")
    layout.place_with_bar(fig, axes, bar.ax, _rc(), above=layout.height(fig, title), cols=cols)
    return fig


def _heat_panel(ax: Any, panel: Any, h: Heatmap, norm: Any, cmap: Any) -> Any:
    """One panel: the cells coloured by speedup, each with its value (and the knob's value where one was chosen)."""
    import numpy as np

    data = np.array([[math.log2(x) if x else np.nan for x in row] for row in panel.cells], dtype=float)
    image = ax.imshow(data, cmap=cmap, norm=norm, aspect="auto")
    shade = np.abs(np.clip(np.ma.filled(norm(data), 0.5), 0, 1) - 0.5)  # the norm once for the panel, not per cell
    for r, row in enumerate(panel.cells):
        for c, x in enumerate(row):
            note = panel.notes[r][c] if panel.notes else ""
            color = "white" if x is not None and shade[r][c] > 0.33 else "black"
            if x is None:
                ax.text(c, r, note or "n/m", ha="center", va="center", fontsize=7, color="#555555")
                continue
            ax.text(c, r - (0.14 if note else 0), f"{x:.2f}×", ha="center", va="center", fontsize=7.5, color=color)
            if note:
                ax.text(c, r + 0.2, note if note == "default" else f"{h.knob}={note}", ha="center", va="center",
                        fontsize=6, color=color)
    if h.chosen_column:  # set the deployed/fastest column apart from the knob's values
        ax.axvline(len(h.columns) - 1.5, color="white", lw=4)
    ax.set_xticks(range(len(h.columns)), h.columns, fontsize=8)
    ax.set_yticks(range(len(h.rows)), h.rows, fontsize=8)
    ax.set_title(panel.title, fontsize=9)
    return image


def landscape_png(ls: Landscape, page: list[ShapeBars]) -> bytes:
    """One chart per shape: each config's speedup over the default as a bar from x1, the table's confirmed
    interval (deployed setting, or best candidate that did not clear noise) drawn over it."""
    return _png(_landscape_figure(ls, page))


def _landscape_figure(ls: Landscape, page: list[ShapeBars]) -> Any:
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cols = min(len(page), 3)
    rows = math.ceil(len(page) / cols)
    bars = max(len(s.bars) for s in page) or 1
    height = bars * 0.24 + 1.3
    fig = plt.figure(figsize=(cols * 5.0, rows * height + 1.3), dpi=_DPI)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(len(page))]
    labels = [_shape_chart(ax, s, ls, bars) for ax, s in zip(axes, page)]
    rounds = "replayed rounds" if ls.source.replay else "paired rounds"
    handles = [Patch(color=_COLORS["deployed"], label="deployed by the table"),
               Patch(color=_COLORS["candidate"], label="best candidate, not beyond noise (default kept)"),
               Patch(color="#4393c3", label="faster than the default"), Patch(color="#f4a582", label="slower"),
               Line2D([], [], color="black", marker="D", linestyle="-", markersize=4,
                      label=f"confirmed speedup, 95% family-wise interval ({rounds})")]
    legend = fig.legend(handles=handles if ls.kind == "table" else handles[2:4], loc="lower center",
                        bbox_to_anchor=(0.5, layout.PAD / fig.get_figheight()), ncols=3, fontsize=8, frameon=False)
    source = "trial medians of the study" if ls.kind == "table" else "medians of the sweep's samples"
    title = fig.suptitle(_suptitle(ls, f"speedup of each config over vLLM's default per shape ({source})"),
                         fontsize=10, y=1 - layout.PAD / fig.get_figheight(), va="top")
    layout.place_charts(fig, axes, labels, _rc(), above=layout.height(fig, title), below=layout.height(fig, legend),
                        cols=cols, tick_size=_TICK_SIZE)
    return fig


def _rc() -> Any:
    import matplotlib

    return matplotlib.rcParams


def _shape_chart(ax: Any, s: ShapeBars, ls: Landscape, rows: int) -> list[Any]:
    """Draw one shape's chart; returns its bar labels (texts left of the axes)."""
    extra = [f"{s.hidden} slower configs not shown"] if s.hidden else []
    extra += [f"{s.failed} failed here ({', '.join(s.failures)})"] if s.failed else []
    ax.set_title(f"{s.label}\n{_verdict_text(s, ls)}", fontsize=8.5)
    if extra:
        ax.set_xlabel("; ".join(extra), fontsize=7, color="#555555")
    if not s.bars:  # vLLM's default did not run here: nothing to compare with
        ax.text(0.5, 0.5, "vLLM's default config did not run here:\nno speedups to show", ha="center",
                va="center", fontsize=8, transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return []
    ys = [rows - 1 - i for i in range(len(s.bars))]  # fastest at the top, every chart's bars equally thick
    vals = [b.speedup for b in s.bars]
    colors = [_COLORS.get(b.role) or ("#4393c3" if b.speedup >= 1 else "#f4a582") for b in s.bars]
    ax.barh(ys, [v - 1 for v in vals], left=1, color=colors, height=0.7)
    iv = s.confirmed[1] if s.confirmed else None
    low = max(min(vals + [0.95] + ([iv.low] if iv and iv.low else [])), 0.5)  # slower than x0.5: clipped
    high = max(vals + [1.05] + ([iv.high] if iv and iv.high else []))
    left = low - 0.22 * (high - low)
    ax.set_xlim(left, high + 0.18 * (high - low))
    ax.set_ylim(-0.6, rows - 0.4)
    marked = next((y for y, b in zip(ys, s.bars) if iv is not None and b.role == s.confirmed[0]), None)
    for y, v in zip(ys, vals):
        if v >= 1 or y == marked:  # right of the bar, and of the interval drawn over it
            x = max(v, iv.high or v) if y == marked else v
            ax.text(x, y, f" {v:.3f}×", va="center", ha="left", fontsize=6.5)
        elif v >= low:
            ax.text(v, y, f"{v:.3f}× ", va="center", ha="right", fontsize=6.5)
        else:
            ax.text(left, y, f" ◂ {v:.2f}×", va="center", ha="left", fontsize=6.5)
    if iv is not None and marked is not None:
        err = [[iv.speedup - (iv.low or iv.speedup)], [(iv.high or iv.speedup) - iv.speedup]]
        ax.errorbar([iv.speedup], [marked], xerr=err, fmt="D", color="black", markersize=4, capsize=3, lw=1.2)
    ax.axvline(1.0, color="#444444", lw=0.8)
    ax.tick_params(axis="x", labelsize=_TICK_SIZE)
    return _bar_labels(ax, ys, [b.label for b in s.bars])


def _bar_labels(ax: Any, ys: list[int], labels: list[str]) -> list[Any]:
    """The bars' names and tick marks, drawn as the y axis would draw them as tick labels, but as one marker line
    and plain texts: a page has hundreds, and an axis makes a Tick object for each label and measures it three
    times per draw."""
    from matplotlib.lines import TICKLEFT, Line2D

    rc = _rc()
    ax.set_yticks([])
    ax.add_line(Line2D([0] * len(ys), ys, transform=ax.get_yaxis_transform(), linestyle="none", marker=TICKLEFT,
                       markersize=rc["ytick.major.size"], markeredgewidth=rc["ytick.major.width"],
                       color=rc["ytick.color"], clip_on=False))
    at, va, ha = ax.get_yaxis_text1_transform(layout.ytick_room(rc))
    color = rc["ytick.color"] if rc["ytick.labelcolor"] == "inherit" else rc["ytick.labelcolor"]
    return [ax.text(0, y, label, transform=at, va=va, ha=ha, fontsize=_TICK_SIZE, color=color)
            for y, label in zip(ys, labels)]


def _verdict_text(s: ShapeBars, ls: Landscape) -> str:
    if ls.kind != "table":
        n = len(s.bars) + s.hidden + s.failed
        return f"{n} config{'s' if n != 1 else ''}" + (f", {s.failed} failed" if s.failed else "")
    if s.confirmed and s.confirmed[0] == "deployed":
        return f"tuned {s.confirmed[1].text()}"
    return "default kept" + (f" (best {s.confirmed[1].text()})" if s.confirmed else "")


def write_pictures(landscapes: list[Landscape], out_dir: Path) -> list[Path]:
    """Write every landscape's pictures into ``out_dir`` (made if missing), each file atomically; returns paths."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"cannot write pictures into {out_dir}: it is not a directory", hint="give a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MlaTuneError(f"cannot make {out_dir}: {e.strerror}") from None
    written: list[Path] = []
    for ls in landscapes:
        for pic in pictures(ls):
            path = join_inside(out_dir, pic.name)
            n = 2
            while path in written:  # two inputs of the same GPU and name: keep both
                path, n = join_inside(out_dir, f"{Path(pic.name).stem}-{n}.png"), n + 1
            written.append(write_bytes_atomic(path, pic.png))
    return written


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Readers see the old picture or the new one; the file gets the usual mode (mkstemp's is 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
