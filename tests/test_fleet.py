"""The fleet view (grace_lit.fleet, plots.fleet_intervals) on a hand-made prediction table: the ranking by lower
bound, the alert list, the printed table's open ends, markers and health names, and the figure written."""
from __future__ import annotations

import numpy as np
import pandas as pd

from grace_lit.fleet import alerts, printed, ranked
from grace_lit.plots import fleet_intervals


def table() -> pd.DataFrame:
    """Five units: B and D share the lowest lower bound (D predicted lower, so first); E's interval reaches the
    cap (open)."""
    return pd.DataFrame({
        "unit": ["A", "B", "C", "D", "E"], "cycle": [100, 120, 90, 80, 60],
        "rul_pred": [60.0, 20.0, 40.0, 15.0, 118.0],
        "rul_lo": [45.0, 10.0, 28.0, 10.0, 95.0], "rul_hi": [75.0, 30.0, 52.0, 20.0, 125.0],
        "rul_hi_open": [False, False, False, False, True], "nominal_coverage": 0.9,
        "health_pred": [1, 2, 1, 2, 0], "health_name": ["degrading", "critical", "degrading", "critical", "healthy"],
        "p_health_0": [0.2, 0.0, 0.1, 0.0, 0.9], "p_health_1": [0.7, 0.1, 0.6, 0.2, 0.1],
        "p_health_2": [0.1, 0.9, 0.3, 0.8, 0.0]})


def test_units_rank_by_lower_bound_then_prediction_and_the_alert_lists_those_below():
    assert ranked(table())["unit"].tolist() == ["D", "B", "C", "A", "E"]
    assert alerts(table(), 30)["unit"].tolist() == ["D", "B", "C"]
    assert alerts(table(), 10)["unit"].tolist() == []  # strictly below
    without = table().assign(rul_lo=np.nan)  # no interval (protocol=paper): by prediction
    assert ranked(without)["unit"].tolist() == ["D", "B", "C", "A", "E"]


def test_the_printed_table_shows_open_ends_uncalibrated_bands_and_health_names():
    text = printed(table(), "cycle", unbounded=np.array([False, False, True, False, False]))
    rows = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert "[95, 125+]" in rows["E"] and "0 healthy" in rows["E"]  # open: RUL >= 95
    assert "[28, 52]*" in rows["C"] and "1 degrading" in rows["C"]  # its band too small to calibrate
    assert "[10, 30]" in rows["B"] and "*" not in rows["B"] and "2 critical" in rows["B"]


def test_the_fleet_figure_is_written(tmp_path):
    path = fleet_intervals(table(), "five units", tmp_path / "fleet.png", alert=30)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
