"""The interval study: ``python -m grace_lit.intervals RUN_DIR ... [--ensemble]`` prints, from finished holdout
runs' files alone (calibration.csv, predictions.csv, preprocessing.json, .hydra/config.yaml), each form's test
coverage and mean width, overall and per true-RUL band, beside the held-out measure that chooses the default form
(grace_lit.calibration.held_out_band_gap). An entry point: nothing in the package imports it. The forms:
grace_lit.conformal; a run's calibration: grace_lit.calibration; ensembles: grace_lit.ensemble.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from scipy.stats import binom

from grace_lit.calibration import edges_of, for_folds, for_run, held_out_band_gap, settings
from grace_lit.conformal import RUN_FORMS, coverage_by_band, raw_truth_coverage
from grace_lit.ensemble import open_runs, out_of_fold, seed_held_out
from grace_lit.errors import GraceError
from grace_lit.io import atomic_write_json
from grace_lit.rundir import load_preprocessing, load_run_config, read_held_out

log = logging.getLogger("grace_lit")

SAMPLING_RANGE = 0.95  # calibrated_95: the share of exactly calibrated intervals' test coverages it spans


def inverted_pairs(rul_pred: np.ndarray, lo: np.ndarray) -> float:
    """The share of pairs of test units in which the higher prediction gets the lower lower bound (0 for a form
    whose bounds never fall as the prediction rises)."""
    higher = rul_pred[:, None] < rul_pred[None, :]
    return float(((lo[:, None] > lo[None, :]) & higher).sum() / max(higher.sum(), 1))


def scored(rul_true: np.ndarray, rul_pred: np.ndarray, lo: np.ndarray, hi: np.ndarray, test: pd.DataFrame,
           high: float | None, edges: list[float]) -> dict[str, Any]:
    """A row's test figures: coverage and width by band, of the raw truth too, the RMSE of the prediction
    (capped truth) and the share of inverted pairs."""
    return {"rmse": float(np.sqrt(np.mean((rul_pred - rul_true) ** 2))),
            "inverted_pairs": inverted_pairs(rul_pred, lo), **coverage_by_band(rul_true, lo, hi, edges),
            **raw_truth_coverage(test.assign(rul_lo=lo, rul_hi=hi), high)}


def measure(run_dir: Path, forms: tuple[str, ...] = RUN_FORMS) -> list[dict[str, Any]]:
    """Test-set coverage and width of each form for one finished holdout run, from its files alone; coverage
    also against the raw truth (``rul_true_raw``) where predictions.csv has it."""
    cfg, prep = load_run_config(run_dir), load_preprocessing(run_dir)
    held, test = read_held_out(run_dir), pd.read_csv(run_dir / "predictions.csv")
    if held is None:
        raise GraceError(f"{run_dir / 'calibration.csv'} is missing. Fix: pass protocol=holdout runs trained since "
                         f"runs write it.")
    edges = edges_of(settings(cfg), prep)
    rows = []
    for form in forms:
        with_form = OmegaConf.merge(cfg, {"interval": {**OmegaConf.to_container(settings(cfg)), "form": form}})
        calibration, _ = for_run(with_form, prep, held)
        lo, hi = calibration.interval(test["rul_pred"].to_numpy())
        rows.append({"run": str(run_dir), "dataset": cfg.dataset.name, "seed": cfg.seed, "form": form,
                     "nominal": calibration.coverage, "calibration_points": sum(calibration.points),
                     "held_out_gap": held_out_band_gap(held, with_form, prep),
                     **scored(test["rul_true"].to_numpy(np.float64), test["rul_pred"].to_numpy(np.float64), lo, hi,
                              test, calibration.high, edges)})
    return rows


def measure_ensemble(run_dirs: list[Path], forms: tuple[str, ...] = ("plain", "mondrian", "monotone", "spread")
                     ) -> list[dict[str, Any]]:
    """As :func:`measure` for the seed ensemble of ``run_dirs`` (their predictions.csv and calibration.csv
    averaged; refused unless they share preprocessing, features and split)."""
    cfg, prep = open_runs(run_dirs).cfg, load_preprocessing(run_dirs[0])
    held = seed_held_out(run_dirs)
    tests = [pd.read_csv(d / "predictions.csv") for d in run_dirs]
    preds = np.stack([t["rul_pred"].to_numpy(dtype=np.float64) for t in tests])
    rul_pred, spread = preds.mean(axis=0), preds.std(axis=0, ddof=1)
    edges = edges_of(settings(cfg), prep)
    rows = []
    for form in forms:
        with_form = OmegaConf.merge(cfg, {"interval": {**OmegaConf.to_container(settings(cfg)),
                                                       "ensemble_form": form}})
        calibration, _ = for_run(with_form, prep, held, ensemble=True)
        lo, hi = calibration.interval(rul_pred, spread)
        rows.append({"run": ",".join(map(str, run_dirs)), "dataset": cfg.dataset.name,
                     "seed": f"mean of {len(run_dirs)}", "form": form, "nominal": calibration.coverage,
                     "calibration_points": sum(calibration.points),
                     "held_out_gap": held_out_band_gap(held, with_form, prep, ensemble=True),
                     **scored(tests[0]["rul_true"].to_numpy(np.float64), rul_pred, lo, hi, tests[0],
                              calibration.high, edges)})
    return rows


def measure_folds(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """As :func:`measure` for the K-fold ensemble of ``run_dirs`` (grace_lit.ensemble): the mean of the folds'
    test predictions (predictions.csv) with the CV+ interval from their out-of-fold cut ends (calibration.csv);
    no held-out gap (every training unit calibrates)."""
    ensemble = open_runs(run_dirs)
    cfg, prep = ensemble.cfg, load_preprocessing(run_dirs[0])
    cross, note = for_folds(cfg, prep, out_of_fold(ensemble))
    if cross is None:
        raise GraceError(f"runs {', '.join(map(str, run_dirs))}: {note}")
    tests = {int(c.protocol.fold): pd.read_csv(d / "predictions.csv") for d, c, _ in ensemble.members}
    preds = np.stack([tests[k]["rul_pred"].to_numpy(dtype=np.float64) for k in sorted(tests)])
    lo, hi = cross.interval(preds)
    test = tests[0]
    return [{"run": ",".join(map(str, run_dirs)), "dataset": cfg.dataset.name,
             "seed": f"mean of {len(run_dirs)} folds", "form": cross.form, "nominal": cross.coverage,
             "calibration_points": sum(cross.points), "held_out_gap": None,
             **scored(test["rul_true"].to_numpy(np.float64), preds.mean(axis=0), lo, hi, test, cross.high,
                      edges_of(settings(cfg), prep))}]


def main(argv: list[str] | None = None) -> None:
    """``python -m grace_lit.intervals RUN_DIR [RUN_DIR ...] [--ensemble] [--json FILE]``: per run and form,
    then per dataset and form (mean over runs), the test set's coverage and mean width overall and per true-RUL
    band, against the raw truth, the RMSE and the share of test-unit pairs whose lower bounds invert their
    predictions' order; ``--ensemble`` adds each dataset's runs as one model: the K fold runs of one split as a
    K-fold ensemble (CV+), other runs averaged as one seed ensemble (also the spread form)."""
    parser = argparse.ArgumentParser(prog="python -m grace_lit.intervals", description=main.__doc__)
    parser.add_argument("run_dirs", type=Path, nargs="+", help="finished protocol=holdout run directories")
    parser.add_argument("--forms", default=",".join(RUN_FORMS),
                        help=f"comma-separated forms (default {','.join(RUN_FORMS)})")
    parser.add_argument("--ensemble", action="store_true",
                        help="also each dataset's runs as one model (K fold runs: CV+; else a seed ensemble)")
    parser.add_argument("--json", type=Path, help="also write the per-run rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rows = [row for d in args.run_dirs for row in measure(d, tuple(args.forms.split(",")))]
        if args.ensemble:
            by_dataset: dict[str, list[Path]] = {}
            for row in rows:
                by_dataset.setdefault(row["dataset"], [])
                if Path(row["run"]) not in by_dataset[row["dataset"]]:
                    by_dataset[row["dataset"]].append(Path(row["run"]))
            rows += [row for dirs in by_dataset.values() if len(dirs) > 1
                     for row in (measure_folds(dirs) if open_runs(dirs).kind == "folds" else measure_ensemble(dirs))]
    except GraceError as err:
        log.error("ERROR %s", err)
        raise SystemExit(1) from None
    table = pd.DataFrame(rows)
    bands = [c for c in table.columns if c.startswith("coverage_rul")]
    # the mean distance of the per-band coverage from nominal: on the test set reported, on the held-out units
    # (held_out_gap) what chooses the default form (docs/intervals.md)
    table["band_gap"] = (table[bands].sub(table["nominal"], axis=0)).abs().mean(axis=1)
    # the test set's own sampling error: the coverage an exactly calibrated interval shows on this many units
    table["units"] = table[[c for c in table.columns if c.startswith("n_rul")]].sum(axis=1)
    tail = (1 - SAMPLING_RANGE) / 2
    low, high = (binom.ppf(q, table["units"], table["nominal"]) / table["units"] for q in (tail, 1 - tail))
    table["calibrated_95"] = [f"{a:.2f}-{b:.2f}" for a, b in zip(low, high)]
    shown = [c for c in table.columns if c.startswith(("coverage", "width"))] + ["rmse", "inverted_pairs", "band_gap",
                                                                                  "held_out_gap"]
    pd.set_option("display.width", 200)
    print(table[["dataset", "seed", "form", "calibration_points", *shown]].round(3).to_string(index=False))
    single = table[~table["seed"].astype(str).str.startswith("mean of")]
    by = single.groupby(["dataset", "form"])
    mean = by[shown].mean().round(3)
    mean.insert(0, "runs", by.size())
    mean["calibrated_95"] = by["calibrated_95"].first()
    print("\nmean over runs (calibrated_95: where 95% of exactly calibrated intervals' test coverage falls, on this "
          "many test units):\n" + mean.to_string())
    for label, column in (("the test sets (reported, chooses nothing)", "band_gap"),
                          ("held-out units (chooses the default form)", "held_out_gap")):
        print(f"\nband gap on {label}, every run and subset: " + ", ".join(
            f"{form} {gap:.3f}" for form, gap in single.groupby("form")[column].mean().sort_values().items()))
    if args.json:
        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
