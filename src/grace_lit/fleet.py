"""The fleet view of a prediction table (presentation only, no model): every unit ranked by its interval's lower
bound, the units whose lower bound falls below a number of cycles (the engines to inspect first), and the
table as printed, open upper ends shown as "125+" and health states by name beside their codes."""
from __future__ import annotations

import numpy as np
import pandas as pd


def ranked(frame: pd.DataFrame) -> pd.DataFrame:
    """Lowest lower bound first (ties: lower prediction, then the table's order); without an interval, by
    prediction."""
    key = frame["rul_lo"].fillna(frame["rul_pred"]) if "rul_lo" in frame else frame["rul_pred"]
    order = np.lexsort((np.arange(len(frame)), frame["rul_pred"].to_numpy(), key.to_numpy()))
    return frame.iloc[order]


def alerts(frame: pd.DataFrame, cycles: float) -> pd.DataFrame:
    """The rows whose lower bound lies below ``cycles``, ranked; by prediction where there is no interval."""
    rows = ranked(frame)
    key = rows["rul_lo"].fillna(rows["rul_pred"]) if "rul_lo" in rows else rows["rul_pred"]
    return rows[key < cycles]


def bound(value: float, is_open: bool) -> str:
    return f"{value:.0f}+" if is_open else f"{value:.0f}"


def printed(frame: pd.DataFrame, time: str, unbounded: np.ndarray | None = None) -> str:
    """The table as shown on screen: unit, ``time``, rul_pred (± rul_spread), the interval "[lo, hi]" (an open
    upper end "hi+": RUL >= lo), marked "*" where its band had too few calibration points (``unbounded``, in
    ``frame``'s order), and the health state "code name"."""
    shown = pd.DataFrame({"unit": frame["unit"], time: frame[time]})
    shown["rul_pred"] = frame["rul_pred"].map("{:.1f}".format)
    if "rul_spread" in frame:
        shown["rul_pred"] += frame["rul_spread"].map(" ±{:.1f}".format)
    if "rul_lo" in frame and frame["rul_lo"].notna().any():
        marks = np.zeros(len(frame), dtype=bool) if unbounded is None else np.asarray(unbounded)
        shown["interval"] = [f"[{lo:.0f}, {bound(hi, bool(is_open))}]" + ("*" if mark else "")
                             for lo, hi, is_open, mark in zip(frame["rul_lo"], frame["rul_hi"],
                                                              frame["rul_hi_open"], marks)]
    if "health_name" in frame:
        shown["health"] = frame["health_pred"].astype(str) + " " + frame["health_name"]
    return shown.to_string(index=False)
