"""Strict reader for whitespace-separated numeric tables (the NASA text format).

Fast path: pandas' C parser. Only when that fails or the shape is wrong do we scan line by line, so the error
can name the file, the line and the fix.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from grace_lit.errors import GraceError

_FIX = "Fix: restore the original NASA file (or delete the cache directory to re-extract the bundled archive)."


def _diagnose(path: Path, n_cols: int) -> GraceError:
    with open(path) as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                return GraceError(f"{path}, line {lineno}: empty line inside the table. {_FIX}")
            if len(fields) != n_cols:
                return GraceError(f"{path}, line {lineno}: {len(fields)} columns, expected {n_cols} "
                                  f"(truncated or malformed row). {_FIX}")
            for field in fields:
                try:
                    value = float(field)
                except ValueError:
                    return GraceError(f"{path}, line {lineno}: non-numeric field {field!r}. {_FIX}")
                if not math.isfinite(value):
                    return GraceError(f"{path}, line {lineno}: non-finite value {field!r}. {_FIX}")
    return GraceError(f"{path}: cannot be parsed as a {n_cols}-column numeric table. {_FIX}")


def read_table(path: str | Path, n_cols: int) -> np.ndarray:
    """Read a numeric table with exactly ``n_cols`` columns per row as float64."""
    path = Path(path)
    if not path.is_file():
        raise GraceError(f"Data file {path} does not exist. Fix: check dataset.data_dir, or leave it unset to use "
                         f"the bundled C-MAPSS archive.")
    if path.stat().st_size == 0:
        raise GraceError(f"Data file {path} is empty. {_FIX}")
    try:
        frame = pd.read_csv(path, sep=r"\s+", header=None, dtype=np.float64, engine="c")
    except (ValueError, pd.errors.ParserError):
        raise _diagnose(path, n_cols) from None
    table = frame.to_numpy()
    if frame.shape[1] != n_cols or not np.isfinite(table).all():  # NaN: a short row or "nan"; also "inf"
        raise _diagnose(path, n_cols)
    return table
