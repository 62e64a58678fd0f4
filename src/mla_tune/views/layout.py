"""Where the charts of a picture go: a grid of equally sized charts, each column and row leaving its charts the room
their labels need, as matplotlib's constrained layout would, from the few sizes the picture knows it wrote.

Constrained layout finds those sizes by measuring every tick label of every chart, in two passes, before the figure
is drawn (which measures them again): that was two fifths of the time a page of per-shape charts took. Sizes are in
inches; the drawing side (plots.py) hands in its figure, axes and matplotlib's rcParams, nothing is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PAD = 3 / 72  # around every chart, the title and the legend (constrained layout's default)
RIGHT = 0.12  # right of a chart: its last x tick label reaches past the axes by half its width


@dataclass(frozen=True)
class Room:
    """Inches a chart needs outside its axes box: labels on the left, title above, ticks and a note below."""

    left: float = 0.0
    top: float = 0.0
    bottom: float = 0.0
    right: float = 0.0


Rect = tuple[float, float, float, float]  # left, bottom, width, height as fractions of the figure


def grid_rects(size: tuple[float, float], cols: int, rooms: Sequence[Room], *, above: float = 0.0,
               below: float = 0.0, beside: float = 0.0, pad: float = PAD) -> list[Rect]:
    """The axes boxes of ``rooms`` (one per chart, row by row, ``cols`` a row) on a figure of ``size`` inches, all
    of one size, keeping ``above``, ``below`` and ``beside`` (right) free (a title, a legend, a colour bar) and
    ``pad`` around every chart: each column as far from the next as its widest room needs, each row as its tallest."""
    if not rooms:
        return []
    width, height = size
    rows = -(-len(rooms) // cols)
    grid = [rooms[r * cols:(r + 1) * cols] for r in range(rows)]
    left = [max(g[c].left for g in grid if c < len(g)) + pad for c in range(cols)]
    right = [max(g[c].right for g in grid if c < len(g)) + pad for c in range(cols)]
    top = [max(x.top for x in g) + pad for g in grid]
    bottom = [max(x.bottom for x in g) + pad for g in grid]
    chart_w = (width - beside - 2 * pad - sum(left) - sum(right)) / cols
    chart_h = (height - above - below - 2 * pad - sum(top) - sum(bottom)) / rows
    if chart_w <= 0 or chart_h <= 0:
        raise ValueError(f"charts do not fit a {width:g} x {height:g} inch figure beside their labels")
    out = []
    y = height - above - pad
    for r, g in enumerate(grid):
        y -= top[r] + chart_h
        x = pad
        for c in range(len(g)):
            x += left[c]
            out.append((x / width, y / height, chart_w / width, chart_h / height))
            x += chart_w + right[c]
        y -= bottom[r]
    return out


def place_charts(fig: Any, axes: Sequence[Any], labels: Sequence[Sequence[Any]], rc: Mapping[str, Any], *,
                 above: float, below: float, cols: int, tick_size: float) -> None:
    """Put charts whose y labels are ``labels`` (texts, one list per chart) and whose x tick labels
    (``tick_size`` points) are not made yet (drawing makes them) where everything fits."""
    renderer = fig.canvas.get_renderer()
    probe = fig.text(0, 0, "0.9", fontsize=tick_size)  # an x tick label's height
    line = probe.get_window_extent(renderer).height / fig.dpi
    probe.remove()
    rooms = [chart_room(ax, texts, line, rc) for ax, texts in zip(axes, labels)]
    for ax, rect in zip(axes, grid_rects(_size(fig), cols, rooms, above=above, below=below)):
        ax.set_position(rect)


def place_with_bar(fig: Any, axes: Sequence[Any], bar: Any, rc: Mapping[str, Any], *, above: float,
                   cols: int) -> None:
    """Put panels with tick labels where everything fits, and their colour bar (the axes ``bar``) right of them,
    0.9 of their height and a twentieth as wide, where ``fig.colorbar(ax=panels)`` puts it."""
    renderer = fig.canvas.get_renderer()
    rooms = []
    for ax in axes:
        line = max((t.get_window_extent(renderer).height for t in ax.xaxis.get_ticklabels()), default=0.0)
        rooms.append(chart_room(ax, ax.yaxis.get_ticklabels(), line / fig.dpi, rc))
    width, height = _size(fig)
    span = grid_rects((width, height), cols, rooms, above=above)  # its heights hold for any ``beside``
    low, high = min(r[1] for r in span) * height, max(r[1] + r[3] for r in span) * height
    bar_h = 0.9 * (high - low)
    labels = chart_room(bar, bar.yaxis.get_ticklabels(), 0.0, rc).left  # its labels are on the right
    beside = 0.03 * width + bar_h / 20 + labels + PAD
    for ax, rect in zip(axes, grid_rects((width, height), cols, rooms, above=above, beside=beside)):
        ax.set_position(rect)
    bar.set_position(((width - labels - PAD - bar_h / 20) / width, (low + 0.05 * (high - low)) / height,
                      bar_h / 20 / width, bar_h / height))


def chart_room(ax: Any, ylabels: Sequence[Any], xline: float, rc: Mapping[str, Any]) -> Room:
    """What one chart needs beyond its axes box: its y labels and y axis label, its title, its x tick labels
    (``xline`` inches high; none where it has no x ticks) and its x axis label."""
    renderer = ax.figure.canvas.get_renderer()
    dpi = ax.figure.dpi
    widest = max((t.get_window_extent(renderer).width for t in ylabels), default=0.0) / dpi
    beside = widest + ytick_room(rc) / 72 if ylabels else 0.0
    if ax.get_ylabel():  # drawn turned a quarter: its width is one line
        beside += ax.yaxis.label.get_window_extent(renderer).width / dpi + rc["axes.labelpad"] / 72
    below = xline + (rc["xtick.major.size"] + rc["xtick.major.pad"]) / 72 if len(ax.get_xticks()) else 0.0
    if ax.get_xlabel():
        below += ax.xaxis.label.get_window_extent(renderer).height / dpi + rc["axes.labelpad"] / 72
    top = ax.title.get_window_extent(renderer).height / dpi + rc["axes.titlepad"] / 72 if ax.get_title() else 0.0
    return Room(left=beside, top=top, bottom=below, right=RIGHT)


def ytick_room(rc: Mapping[str, Any]) -> float:
    """Points from the axes to a y tick label: the tick (drawn outwards) and the pad."""
    return rc["ytick.major.size"] + rc["ytick.major.pad"]


def height(fig: Any, artist: Any) -> float:
    """Inches a figure title or legend takes, with the pad around it."""
    return artist.get_window_extent(fig.canvas.get_renderer()).height / fig.dpi + PAD


def _size(fig: Any) -> tuple[float, float]:
    return fig.get_figwidth(), fig.get_figheight()
