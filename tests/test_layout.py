"""layout: where the charts of a picture go (pure arithmetic), and, on real pictures, that nothing overlaps."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest

from mla_tune.tables.landscape_io import read_table
from mla_tune.views.layout import Room, grid_rects
from mla_tune.views.plotdata import heatmaps, shape_bars

ROOT = Path(__file__).resolve().parent.parent
FA_H200 = ROOT / "results/h200/tables/FLASH_ATTN_MLA-deepseek-v3-tp1.yaml"  # 7 heatmap panels, 36 shapes


def test_each_column_is_as_far_in_as_its_widest_labels_and_every_chart_is_one_size():
    rooms = [Room(left=1.0, top=0.5), Room(left=0.2, top=0.3), Room(left=0.4, top=0.3, bottom=0.6),
             Room(left=2.0, bottom=0.2)]
    rects = grid_rects((10.0, 8.0), 2, rooms, above=1.0, below=0.5, pad=0.0)
    assert len({(round(w, 9), round(h, 9)) for _, _, w, h in rects}) == 1
    [(x0, y0, w, h), (x1, y1, _, _), (x2, y2, _, _), (x3, y3, _, _)] = rects
    assert x0 * 10 == pytest.approx(1.0) and x2 == x0  # column 0: the wider of 1.0 and 0.4
    assert (x1 - x0 - w) * 10 == pytest.approx(2.0) and x3 == x1  # column 1: the wider of 0.2 and 2.0
    assert (y0 + h) * 8 == pytest.approx(8.0 - 1.0 - 0.5)  # below the title, row 0's tallest top
    assert (y0 - y2 - h) * 8 == pytest.approx(0.3)  # row 0 has no bottom room, row 1's tallest top is 0.3
    assert y2 * 8 == pytest.approx(0.5 + 0.6) and y0 == y1 and y2 == y3  # above the legend, row 1's bottom
    assert (x1 + w) * 10 == pytest.approx(10.0)


def test_pads_and_the_room_beside_are_kept_free():
    rects = grid_rects((6.0, 4.0), 3, [Room(left=0.5, right=0.1)] * 3, beside=1.0, pad=0.05)
    x, _, w, _ = rects[-1]
    assert (x + w) * 6 == pytest.approx(6.0 - 1.0 - 0.05 - 0.1 - 0.05)
    assert rects[0][0] * 6 == pytest.approx(0.05 + 0.5 + 0.05)
    assert grid_rects((6.0, 4.0), 3, []) == []


def test_labels_wider_than_the_figure_are_one_clear_error():
    with pytest.raises(ValueError, match="do not fit a 3 x 2 inch figure"):
        grid_rects((3.0, 2.0), 2, [Room(left=2.0)] * 2)


def _title(fig):
    return next(t for t in fig.texts if t.get_text() == fig.get_suptitle())


def _boxes(fig):
    renderer = fig.canvas.get_renderer()
    return renderer, [ax.get_tightbbox(renderer) for ax in fig.axes]


def _assert_apart(fig, title, legend=None):
    """No chart's labels, ticks or title reach into another chart or past the figure, the title above them all and
    the legend below."""
    renderer, boxes = _boxes(fig)
    width, height = fig.canvas.get_width_height()
    for a, b in combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    for box in boxes:
        assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5, box
    assert title.get_window_extent(renderer).y0 >= max(b.y1 for b in boxes)
    if legend is not None:
        assert legend.get_window_extent(renderer).y1 <= min(b.y0 for b in boxes)


def test_a_page_of_per_shape_charts_keeps_every_label_clear_of_its_neighbours():
    pytest.importorskip("matplotlib")
    from mla_tune.views import plots

    ls = read_table(FA_H200)
    fig = plots._landscape_figure(ls, shape_bars(ls)[:plots.SHAPES_PER_PAGE])
    try:
        assert len(fig.axes) == plots.SHAPES_PER_PAGE
        _assert_apart(fig, _title(fig), fig.legends[0])
    finally:
        plots._pyplot().close(fig)


def test_a_heatmap_keeps_its_panels_and_colour_bar_apart():
    pytest.importorskip("matplotlib")
    from mla_tune.views import plots

    ls = read_table(FA_H200)
    [h] = [h for h in heatmaps(ls) if h.knob == "max_num_splits"]
    fig = plots._heatmap_figure(ls, h)
    try:
        assert len(fig.axes) == len(h.panels) + 1  # the panels and the colour bar, no empty slots
        _assert_apart(fig, _title(fig))
    finally:
        plots._pyplot().close(fig)
