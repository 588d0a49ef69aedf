"""The per-run controller figure: task weights, and where the task gradients were measured their norms and the
cosine between them, one panel each. The report's critical-difference diagram and GABA's weights against the
floor: written as PNGs."""
from __future__ import annotations

import struct

import pandas as pd

from grace_lit.plots import DPI, PANEL, cd_diagram, controller_weights, weight_floor
from grace_lit.stats import nemenyi_groups


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_gradient_cosine_gets_its_own_panel(tmp_path):
    log = pd.DataFrame({"epoch": [0, 1, 2], "step": [10, 20, 30], "weight_rul": [0.5, 0.4, 0.3],
                        "weight_health": [0.5, 0.6, 0.7], "g_rul": [9.0, 8.0, 7.0], "g_health": [1.0, 1.1, 1.2],
                        "cos_rul_health": [float("nan"), -0.2, 0.1]})  # not measured during the first epoch
    with_cos = controller_weights(log, 10, "a run", tmp_path / "with.png")
    without = controller_weights(log.drop(columns="cos_rul_health"), 10, "a run", tmp_path / "without.png")
    # one panel per quantity, PANEL[0] inches wide each: three panels with the cosine, two without
    assert png_size(with_cos) == (round(3 * PANEL[0] * DPI), round(PANEL[1] * DPI))
    assert png_size(without) == (round(2 * PANEL[0] * DPI), round(PANEL[1] * DPI))


def test_critical_difference_diagram_is_written(tmp_path):
    ranks = pd.Series({"gaba + wmse": 1.4, "fixed + wmse [loss.weights=[0.05,0.95]]": 1.9, "amnl + wmse": 3.1,
                       "gradnorm + wmse": 3.6, "single_task + wmse": 5.0})
    path = cd_diagram(ranks, 1.5, nemenyi_groups(ranks, 1.5), "protocol=holdout", tmp_path / "sub" / "cd.png")
    width, height = png_size(path)
    assert path == tmp_path / "sub" / "cd.png" and width > 600 and height > 150
    fewer = cd_diagram(ranks.iloc[:3], 1.5, [], "three arms", tmp_path / "cd3.png")
    assert png_size(fewer)[1] < height  # one row of labels per pair of arms, one bar per group


def test_gaba_weights_figure_has_a_panel_per_dataset_and_arm(tmp_path):
    rows = pd.DataFrame({"dataset": ["FD001", "FD001", "FD002"], "arm": ["gaba + wmse"] * 3, "seed": [1, 2, 1],
                         "fold": [0, 0, 0], "min_weight": [0.05] * 3}, index=[0, 1, 2])
    log = pd.DataFrame({"epoch": [0, 1, 2], "step": [50, 100, 150], "weight_rul": [0.5, 0.1, 0.0476]})
    path = weight_floor(rows, {i: log for i in rows.index}, "GABA", tmp_path / "w.png")
    assert png_size(path) == (round(2 * PANEL[0] * DPI), round(PANEL[1] * DPI))  # two panels: FD001, FD002
