"""The per-run controller figure: task weights, and where the task gradients were measured their norms and the
cosine between them, one panel each."""
from __future__ import annotations

import struct

import pandas as pd

from grace_lit.plots import DPI, PANEL, controller_weights


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
