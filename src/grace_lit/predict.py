"""Apply a finished run to new units: ``python -m grace_lit.predict RUN_DIR DATA [--out FILE] [--all-windows]``
(console script ``grace-predict``); ``--export onnx`` writes the model for deployment instead. Several run
directories before DATA are one model (grace_lit.ensemble): a seed ensemble, or the K fold runs of one split
(CV+ intervals). Each prediction carries its interval (grace_lit.calibration) and its health state by name;
``--plot``, ``--alert`` and ``--sort lower`` give the fleet view (grace_lit.fleet).

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
from grace_lit.calibration import for_folds, for_run, from_run_dir, with_intervals
from grace_lit.conformal import COLUMNS, Calibration, CrossConformal, interval_columns
from grace_lit.data.windows import with_health_names
from grace_lit.ensemble import combine, open_runs, out_of_fold, seed_held_out
from grace_lit.errors import GraceError
from grace_lit.export import export_onnx
from grace_lit.fleet import alerts, printed, ranked
from grace_lit.io import atomic_write_csv
from grace_lit.plots import fleet_intervals
from grace_lit.replay import selected_model
from grace_lit.rundir import load_preprocessing, load_run_config

log = logging.getLogger("grace_lit")


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
def model_predictions(run_dir: Path, data: Path, all_windows: bool = False, device: str | None = None,
                      allow_unseen: bool = False) -> pd.DataFrame:
    """One row per unit (its last window) or per window: unit, time, rul_pred and, when the run trained its
    health head, health_pred and p_health_<k> for every health state k; no interval."""
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
    return frame


def predict(run_dir: Path, data: Path, all_windows: bool = False, device: str | None = None,
            allow_unseen: bool = False) -> pd.DataFrame:
    """:func:`model_predictions` with the interval rul_lo, rul_hi, rul_hi_open and the nominal_coverage it was
    calibrated for (empty without one: ``frame.attrs["interval_note"]`` says why) and health_name beside
    health_pred."""
    frame = model_predictions(run_dir, data, all_windows, device, allow_unseen)
    calibration, note = from_run_dir(run_dir, load_run_config(run_dir), load_preprocessing(run_dir))
    return presented(frame, calibration, note, with_intervals(frame[["rul_pred"]], calibration))


def presented(frame: pd.DataFrame, calibration: Calibration | CrossConformal | None, note: str | None,
              intervals: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the interval columns (of ``intervals``) right after rul_pred (after rul_spread for an
    ensemble) and the predicted health state's name right after its code."""
    at = frame.columns.get_loc("rul_spread" if "rul_spread" in frame.columns else "rul_pred") + 1
    for i, column in enumerate(COLUMNS):
        frame.insert(at + i, column, intervals[column].to_numpy())
    if "health_pred" in frame:
        frame = with_health_names(frame, sum(c.startswith("p_health_") for c in frame.columns))
    frame.attrs["interval_note"] = note
    frame.attrs["calibration"] = calibration
    return frame


def predict_ensemble(run_dirs: list[Path], data: Path, all_windows: bool = False,
                     device: str | None = None, allow_unseen: bool = False) -> pd.DataFrame:
    """Several finished runs as one model (grace_lit.ensemble): rul_pred their mean, rul_spread their standard
    deviation, p_health_<k> their mean probabilities. A seed ensemble's interval is calibrated on their shared
    held-out units (interval.ensemble_form of the first run's config); a K-fold ensemble's is CV+ from the
    out-of-fold cut ends. Runs that do not belong together are refused."""
    ensemble = open_runs(run_dirs)
    frame, members = combine([model_predictions(d, data, all_windows, device, allow_unseen) for d in run_dirs])
    prep = load_preprocessing(run_dirs[0])
    if ensemble.kind == "folds":
        cross, note = for_folds(ensemble.cfg, prep, out_of_fold(ensemble))
        folds = [int(cfg.protocol.fold) for _, cfg, _ in ensemble.members]
        intervals = (pd.DataFrame({c: np.nan for c in COLUMNS}, index=frame.index) if cross is None else
                     pd.DataFrame(interval_columns(*cross.interval(members[np.argsort(folds)]), cross.coverage,
                                                   cross.high), index=frame.index))
        return presented(frame, cross, note, intervals)
    calibration, note = for_run(ensemble.cfg, prep, seed_held_out(run_dirs), ensemble=True)
    return presented(frame, calibration, note, with_intervals(frame[["rul_pred", "rul_spread"]], calibration,
                                                              frame["rul_spread"].to_numpy()))


def calibration_words(calibration: Calibration | CrossConformal | None) -> str:
    if calibration is None:
        return "no interval"
    source = "out-of-fold cut ends of every training unit" if calibration.form == "cv+" else "held-out cut ends"
    return f"{calibration.coverage:.0%} interval ({calibration.form}, calibrated on {sum(calibration.points)} {source})"


def report(frame: pd.DataFrame, time: str, rows: int) -> None:
    """The interval's calibration (or why there is none) and the first ``rows`` rows as printed."""
    calibration = frame.attrs["calibration"]
    if calibration is None:
        log.info("%s", frame.attrs["interval_note"])
    else:
        log.info("rul_lo, rul_hi: %s; rul_hi_open: the upper end is the cap, the interval says RUL >= rul_lo",
                 calibration_words(calibration))
    head = frame.head(rows)
    unbounded = calibration.unbounded(head["rul_pred"]) if isinstance(calibration, Calibration) else None
    log.info("%s%s", printed(head, time, unbounded), "" if len(frame) <= rows else
             f"\n... {len(frame) - rows} more rows in the CSV")
    if unbounded is not None and unbounded.any():
        log.info("* a band too small to calibrate: the interval is the whole range (a warning at calibration "
                 "says which)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="grace-predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                        help="RUN_DIR [RUN_DIR ...] DATA: one finished run's directory (holds .hydra/, "
                             "checkpoints/), or several as one model (a seed ensemble, or the K fold runs of one "
                             "split); then the units to predict: CSV / Parquet (or NASA .txt)")
    parser.add_argument("--out", type=Path, help="CSV to write (default RUN_DIR/predict.csv); with --export, "
                                                  "the directory (default RUN_DIR/export)")
    parser.add_argument("--all-windows", action="store_true", help="every window, not only each unit's last")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--export", choices=["onnx"], help="write the model and its preprocessing contract")
    parser.add_argument("--allow-unseen", action="store_true",
                        help="predict data whose operating settings lie far outside the training range (refused "
                             "otherwise: the model never saw such conditions)")
    parser.add_argument("--sort", choices=["lower"], help="lower: write the rows ranked by the interval's lower "
                                                           "bound, the first to inspect first")
    parser.add_argument("--alert", type=float, metavar="N",
                        help="list the units whose lower bound lies below N (time units of the data)")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="draw every unit's interval ranked by lower bound, coloured by health state")
    parser.add_argument("--show", type=int, default=10, metavar="ROWS", help="rows printed (default 10)")
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
        if args.sort == "lower":
            frame = ranked(frame)
        out = args.out or args.run_dir / "predict.csv"
        atomic_write_csv(out, frame)
        log.info("%d rows (%d units%s) -> %s", len(frame), frame["unit"].nunique(),
                 f", {len(args.run_dirs)} runs as one model" if len(args.run_dirs) > 1 else "", out)
        time = load_preprocessing(args.run_dir).time
        report(frame, time, args.show)
        if args.alert is not None:
            flagged = alerts(frame, args.alert)
            log.info("alert: %d of %d rows have a lower bound below %g%s", len(flagged), len(frame), args.alert,
                     ":\n" + printed(flagged, time) if len(flagged) else "")
        if args.plot:
            runs = args.run_dirs[0] if len(args.run_dirs) == 1 else f"{len(args.run_dirs)} runs as one model"
            title = f"{runs} on {args.data.name}:\n{calibration_words(frame.attrs['calibration'])}"
            log.info("fleet figure -> %s", fleet_intervals(frame, title, args.plot, args.alert))
    except GraceError as err:
        log.error("ERROR %s", err)
        sys.exit(1)


if __name__ == "__main__":
    main()
