"""Apply a finished run to new units: ``python -m grace_lit.predict RUN_DIR DATA [--out FILE] [--all-windows]``
(console script ``grace-predict``); ``--export onnx`` writes the model for deployment instead.

Loads the run's config (``.hydra/config.yaml``), its fitted preprocessing (``preprocessing.json``) and the
selected checkpoint with its EMA shadow (as ``trainer.test`` scores it), standardises DATA exactly as the run's
test set was, and predicts the RUL and health-state probabilities at each unit's last window (or every window).
DATA is a CSV or Parquet table with the run's column names, or, for a C-MAPSS run, a NASA text file.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate

from grace_lit.data import cmapss
from grace_lit.data.pipeline import Runs, series
from grace_lit.data.preprocess import Preprocessing
from grace_lit.data.table import read_frame, runs_from_frame
from grace_lit.data.windows import WindowSet
from grace_lit.errors import GraceError
from grace_lit.export import export_onnx
from grace_lit.io import atomic_write_csv
from grace_lit.replay import load_run_config, selected_model

log = logging.getLogger("grace_lit")


def load_preprocessing(run_dir: Path) -> Preprocessing:
    path = run_dir / "preprocessing.json"
    if not path.is_file():
        raise GraceError(f"{path} is missing. Fix: pass the directory of a run that finished (grace_lit.train "
                         f"writes preprocessing.json beside metrics.json).")
    return Preprocessing.from_json(path.read_text())


def read_units(path: Path, prep: Preprocessing, run_dir: Path) -> Runs:
    """DATA as pipeline rows, refused unless it has every column the run was trained on."""
    needed = [prep.unit, prep.time, *prep.features, *prep.conditions]
    if path.suffix == ".txt":  # a NASA C-MAPSS text file, its columns named as cmapss.COLUMNS
        unknown = [c for c in needed if c not in cmapss.COLUMNS]
        if unknown or (prep.unit, prep.time) != ("unit", "cycle"):
            raise GraceError(f"{path} is read as a NASA C-MAPSS text file, but run {run_dir} was trained on columns "
                             f"{needed}. Fix: give a CSV or Parquet table with those columns.")
        return cmapss.runs(cmapss.read_nasa(path), path, prep.features, prep.conditions)
    frame = read_frame(path)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise GraceError(f"{path} lacks the columns {missing} that run {run_dir} was trained on (its "
                         f"preprocessing.json). Fix: give a table with columns {needed}, named as in training.")
    return runs_from_frame(frame, path, prep.unit, prep.time, prep.features, prep.conditions)[0]


@torch.no_grad()
def predict(run_dir: Path, data: Path, all_windows: bool = False, device: str | None = None) -> pd.DataFrame:
    """One row per unit (its last window) or per window: unit, time, rul_pred and, when the run trained its
    health head, health_pred and p_health_<k> for every health state k."""
    cfg = load_run_config(run_dir)
    prep = load_preprocessing(run_dir)
    runs = read_units(data, prep, run_dir)
    windows = WindowSet(series(runs, prep, test=True), window=prep.window, stride=prep.eval_stride,
                        pad_mode=prep.pad_mode, health_thresholds=prep.health_thresholds)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = selected_model(run_dir, cfg).eval().to(device)
    # the test set's batches exactly (same order and size), so the run's own test predictions are reproduced
    rul, probs = [], []
    for start in range(0, len(windows), cfg.data.eval_batch_size):
        x = windows.__getitems__(list(range(start, min(start + cfg.data.eval_batch_size, len(windows)))))[0]
        rul_pred, logits = model(x.to(device))
        rul.append(rul_pred.cpu())
        probs.append(torch.softmax(logits, dim=-1).cpu())
    keep = np.ones(len(windows), dtype=bool) if all_windows else windows.is_last.numpy()
    unit = windows.unit.numpy()[keep]
    first_row = {int(runs.unit[s.start]): s.start for s in runs.units()}
    frame = pd.DataFrame({
        "unit": [runs.name(int(u)) for u in unit],
        prep.time: runs.time[[first_row[int(u)] + r for u, r in zip(unit, windows.end_row[keep])]],
        "rul_pred": torch.cat(rul).numpy()[keep]})
    if instantiate(cfg.loss.controller).trains_health:
        p = torch.cat(probs).numpy()[keep]
        frame["health_pred"] = p.argmax(axis=1)
        for k in range(p.shape[1]):
            frame[f"p_health_{k}"] = p[:, k]
    return frame


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="grace-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run's directory (holds .hydra/, checkpoints/)")
    parser.add_argument("data", type=Path, nargs="?", help="units to predict: CSV / Parquet (or NASA .txt)")
    parser.add_argument("--out", type=Path, help="CSV to write (default RUN_DIR/predict.csv); with --export, "
                                                  "the directory (default RUN_DIR/export)")
    parser.add_argument("--all-windows", action="store_true", help="every window, not only each unit's last")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--export", choices=["onnx"], help="write the model and its preprocessing contract")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.export:
            cfg = load_run_config(args.run_dir)
            paths = export_onnx(selected_model(args.run_dir, cfg), load_preprocessing(args.run_dir),
                                args.out or args.run_dir / "export")
            log.info("wrote %s and %s", *paths)
            return
        if args.data is None:
            parser.error("DATA is required unless --export is given")
        frame = predict(args.run_dir, args.data, args.all_windows, args.device)
        out = args.out or args.run_dir / "predict.csv"
        atomic_write_csv(out, frame)
        log.info("%d rows (%d units) -> %s", len(frame), frame["unit"].nunique(), out)
    except GraceError as err:
        log.error("ERROR %s", err)
        sys.exit(1)


if __name__ == "__main__":
    main()
