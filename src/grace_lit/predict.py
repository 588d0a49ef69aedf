"""Apply a finished run to new units: ``python -m grace_lit.predict RUN_DIR DATA [--out FILE] [--all-windows]``
(console script ``grace-predict``); ``--export onnx`` writes the model for deployment instead. Several run
directories before DATA average a seed ensemble. Each prediction carries its interval (grace_lit.intervals).

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
from grace_lit.intervals import (Calibration, ensemble_held_out, ensemble_runs, for_run, from_run_dir,
                                 with_intervals)
from grace_lit.io import atomic_write_csv
from grace_lit.replay import load_run_config, selected_model

log = logging.getLogger("grace_lit")


def load_preprocessing(run_dir: Path) -> Preprocessing:
    path = run_dir / "preprocessing.json"
    if not path.is_file():
        raise GraceError(f"{path} is missing. Fix: pass the directory of a run that finished (grace_lit.train "
                         f"writes preprocessing.json beside metrics.json).")
    return Preprocessing.from_json(path.read_text())


# Operating settings farther than this share of their training range beyond it (plus 0.1% of their size, for a
# setting constant in training) are conditions the model never saw: an FD001 run on FD002's data, say.
UNSEEN_MARGIN = 0.5


def read_units(path: Path, prep: Preprocessing, run_dir: Path, allow_unseen: bool = False) -> Runs:
    """DATA as pipeline rows, refused unless it has every column the run was trained on and (``allow_unseen``
    false) its operating settings lie near their training range."""
    settings = prep.conditions if allow_unseen else prep.settings  # what standardisation needs, or all settings
    needed = [prep.unit, prep.time, *prep.features, *settings]
    if path.suffix == ".txt":  # a NASA C-MAPSS text file, its columns named as cmapss.COLUMNS
        unknown = [c for c in needed if c not in cmapss.COLUMNS]
        if unknown or (prep.unit, prep.time) != ("unit", "cycle"):
            raise GraceError(f"{path} is read as a NASA C-MAPSS text file, but run {run_dir} was trained on columns "
                             f"{needed}. Fix: give a CSV or Parquet table with those columns.")
        runs = cmapss.runs(cmapss.read_nasa(path), path, prep.features, settings)
    else:
        frame = read_frame(path)
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise GraceError(f"{path} lacks the columns {missing} that run {run_dir} was trained on (its "
                             f"preprocessing.json). Fix: give a table with columns {needed}, named as in training.")
        runs = runs_from_frame(frame, path, prep.unit, prep.time, prep.features, settings)[0]
    if not allow_unseen:
        check_seen(runs, prep, run_dir)
    return runs


def check_seen(runs: Runs, prep: Preprocessing, run_dir: Path) -> None:
    """Refuse rows whose operating settings lie far outside their training range (preprocessing.json's
    setting_range), whatever the standardisation: a globally standardised run has no condition map to refuse
    them by. A per-condition run's own check of the conditions comes first (it names the condition)."""
    if not prep.setting_range:  # a run from before the range was kept
        return
    if prep.conditions:
        prep.groups(runs.conditions, runs.path, runs.row)
    low, high = np.asarray(prep.setting_range, dtype=np.float64).T
    slack = UNSEEN_MARGIN * (high - low) + 1e-3 * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
    outside = (runs.conditions < low - slack) | (runs.conditions > high + slack)
    rows = np.flatnonzero(outside.any(axis=1))
    if rows.size:
        i = rows[np.argmin(runs.row[rows])]  # the first such row of the file
        j = int(np.flatnonzero(outside[i])[0])
        raise GraceError(f"{runs.path}, row {runs.row[i]}: operating setting {prep.settings[j]}="
                         f"{runs.conditions[i, j]:g} lies far outside its range in the training units of run "
                         f"{run_dir} ({low[j]:g} to {high[j]:g}; {rows.size} of {len(runs.row)} rows "
                         f"lie outside): the model never saw these operating conditions. Fix: predict with a run "
                         f"trained on them, or pass --allow-unseen to predict anyway.")


@torch.no_grad()
def predict(run_dir: Path, data: Path, all_windows: bool = False, device: str | None = None,
            intervals: bool = True, allow_unseen: bool = False) -> pd.DataFrame:
    """One row per unit (its last window) or per window: unit, time, rul_pred, the interval rul_lo, rul_hi and
    the coverage it was calibrated for (empty without one: ``frame.attrs["interval_note"]`` says why) and, when
    the run trained its health head, health_pred and p_health_<k> for every health state k."""
    cfg = load_run_config(run_dir)
    prep = load_preprocessing(run_dir)
    runs = read_units(data, prep, run_dir, allow_unseen)
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
    if not intervals:
        return frame
    calibration, note = from_run_dir(run_dir, cfg, prep)
    return interval_columns(frame, calibration, note)


def interval_columns(frame: pd.DataFrame, calibration: Calibration | None, note: str | None,
                     spread: np.ndarray | None = None) -> pd.DataFrame:
    """rul_lo, rul_hi, coverage right after rul_pred (after rul_spread for an ensemble)."""
    extra = with_intervals(frame[["rul_pred"]], calibration, spread)
    at = frame.columns.get_loc("rul_spread" if "rul_spread" in frame.columns else "rul_pred") + 1
    for i, column in enumerate(c for c in extra.columns if c != "rul_pred"):
        frame.insert(at + i, column, extra[column].to_numpy())
    frame.attrs["interval_note"] = note
    frame.attrs["calibration"] = calibration
    return frame


def predict_ensemble(run_dirs: list[Path], data: Path, all_windows: bool = False,
                     device: str | None = None, allow_unseen: bool = False) -> pd.DataFrame:
    """Several finished runs (a seed ensemble) averaged: rul_pred their mean, rul_spread their standard deviation,
    the interval calibrated on their shared held-out units (interval.ensemble_form of the first run's config),
    p_health_<k> their mean probabilities. Runs that differ in preprocessing, features or split are refused."""
    runs = ensemble_runs(run_dirs)
    frames = [predict(d, data, all_windows, device, intervals=False, allow_unseen=allow_unseen) for d in run_dirs]
    preds = np.stack([f["rul_pred"].to_numpy(dtype=np.float64) for f in frames])
    frame = frames[0].assign(rul_pred=preds.mean(axis=0))
    frame.insert(frame.columns.get_loc("rul_pred") + 1, "rul_spread", preds.std(axis=0, ddof=1))
    p_columns = [c for c in frame.columns if c.startswith("p_health_")]
    if p_columns and all(set(p_columns) <= set(f.columns) for f in frames):
        p = np.mean([f[p_columns].to_numpy() for f in frames], axis=0)
        frame[p_columns] = p
        frame["health_pred"] = p.argmax(axis=1)
    calibration, note = for_run(runs[0][1], load_preprocessing(run_dirs[0]), ensemble_held_out(run_dirs),
                                ensemble=True)
    return interval_columns(frame, calibration, note, spread=frame["rul_spread"].to_numpy())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="grace-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                        help="RUN_DIR [RUN_DIR ...] DATA: one finished run's directory (holds .hydra/, "
                             "checkpoints/), or several to average as a seed ensemble; then the units to predict: "
                             "CSV / Parquet (or NASA .txt)")
    parser.add_argument("--out", type=Path, help="CSV to write (default RUN_DIR/predict.csv); with --export, "
                                                  "the directory (default RUN_DIR/export)")
    parser.add_argument("--all-windows", action="store_true", help="every window, not only each unit's last")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--export", choices=["onnx"], help="write the model and its preprocessing contract")
    parser.add_argument("--allow-unseen", action="store_true",
                        help="predict data whose operating settings lie far outside the training range (refused "
                             "otherwise: the model never saw such conditions)")
    args = parser.parse_args(argv)
    # every path but a last one that is not a directory is a run (DATA is a file)
    data = args.paths[-1] if len(args.paths) > 1 and not args.paths[-1].is_dir() else None
    args.run_dirs, args.data = (args.paths[:-1] if data is not None else args.paths), data
    args.run_dir = args.run_dirs[0]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.export:
            if len(args.run_dirs) > 1:
                parser.error("--export takes one run directory")
            cfg = load_run_config(args.run_dir)
            prep = load_preprocessing(args.run_dir)
            paths = export_onnx(selected_model(args.run_dir, cfg), prep, args.out or args.run_dir / "export",
                                *from_run_dir(args.run_dir, cfg, prep))
            log.info("wrote %s and %s", *paths)
            return
        if args.data is None:
            parser.error("DATA is required unless --export is given")
        if len(args.run_dirs) > 1:
            frame = predict_ensemble(args.run_dirs, args.data, args.all_windows, args.device, args.allow_unseen)
        else:
            frame = predict(args.run_dir, args.data, args.all_windows, args.device, allow_unseen=args.allow_unseen)
        out = args.out or args.run_dir / "predict.csv"
        atomic_write_csv(out, frame)
        log.info("%d rows (%d units%s) -> %s", len(frame), frame["unit"].nunique(),
                 f", mean of {len(args.run_dirs)} runs" if len(args.run_dirs) > 1 else "", out)
        calibration = frame.attrs["calibration"]
        if calibration is None:
            log.info("%s", frame.attrs["interval_note"])
        else:
            log.info("rul_lo, rul_hi: %.0f%% interval (%s), calibrated on %d held-out cut ends", 100 *
                     calibration.coverage, calibration.form, sum(calibration.points))
    except GraceError as err:
        log.error("ERROR %s", err)
        sys.exit(1)


if __name__ == "__main__":
    main()
