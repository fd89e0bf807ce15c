"""The trend chart: a round y axis, the smallest series summed, bars as tall as their values."""

from __future__ import annotations

import pytest

from include.retention.charts import Rect, Series, TrendChart, layout, to_svg, top_series


@pytest.mark.parametrize(
    ("largest", "axis_top"), [(0, None), (3, "4"), (10, "12"), (99, "100"), (1234, "1 600")]
)
def test_the_y_axis_ends_on_a_round_number(largest, axis_top):
    chart = TrendChart(["11-01", "11-02"], [Series("a", [largest, 0])], "nothing", "chart")
    svg = to_svg(chart)
    if axis_top is None:
        assert "nothing" in svg and "<rect" not in svg
    else:
        assert f">{axis_top}</text>" in svg


def test_the_smallest_series_are_summed_into_one():
    series = [Series(name, [n, 1]) for name, n in (("a", 9), ("b", 5), ("c", 2), ("d", 0))]
    kept = top_series(series, 1, "others")
    assert [(s.name, s.values) for s in kept] == [("a", [9, 1]), ("others", [7, 3])]


def test_stacked_bars_are_proportional_to_their_values():
    chart = TrendChart(["d1"], [Series("a", [3]), Series("b", [1])], "none", "chart")
    bars = [s for s in layout(chart) if isinstance(s, Rect) and s.title]
    assert [b.title for b in bars] == ["a d1: 3", "b d1: 1"]
    assert bars[0].h == pytest.approx(3 * bars[1].h)
    assert bars[1].y + bars[1].h == pytest.approx(bars[0].y)  # b sits on top of a
