"""The results report: exact aggregation on hand-made metrics.json files, failed and unfinished runs listed, and
every figure written as a PNG from a real (tiny) run."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, cli_env
from grace_lit.replay import window_predictions
from grace_lit.report import main, variant

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SELECTION = {"paper": "test set (published protocol)", "holdout": "held-out training units"}


def write_run(root: Path, name: str, **fields) -> Path:
    run = root / name
    run.mkdir(parents=True)
    base = {"status": "completed", "protocol": "paper", "dataset": "FD001", "loss": "gaba", "rul_loss": "wmse",
            "command": "python -m grace_lit.train model=small"}
    base.update(fields)
    base["selection"] = SELECTION[base["protocol"]]
    (run / "metrics.json").write_text(json.dumps(base))
    return run


def metrics(rmse: float, nasa: float, acc: float | None, best: int, wall: float) -> dict:
    return {"test/rmse_last": rmse, "test/rmse_all": rmse + 5.0, "test/nasa": nasa, "test/health_acc": acc,
            "best_epoch": best, "wall_time_s": wall}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for i, (seed, rmse, nasa, acc, best, wall) in enumerate(
            [(1, 10.0, 200.0, 0.5, 10, 100.0), (2, 12.0, 300.0, 0.6, 20, 110.0), (3, 17.0, 400.0, 0.7, 30, 120.0)]):
        write_run(root, f"{i}_gaba", seed=seed, **metrics(rmse, nasa, acc, best, wall))
    write_run(root, "3_amnl", loss="amnl", seed=1, **metrics(20.0, 500.0, 0.8, 5, 50.0))
    write_run(root, "4_single", loss="single_task", seed=1, **metrics(30.0, 900.0, None, 7, 40.0))
    for i, (seed, rmse) in enumerate([(1, 14.0), (2, 16.0)]):
        write_run(root, f"{5 + i}_holdout", protocol="holdout", seed=seed, **metrics(rmse, 100.0, 0.5, 3, 10.0))
    write_run(root, "7_beta", seed=1, command="python -m grace_lit.train model=small loss.controller.beta=0.9 seed=1",
              **metrics(99.0, 999.0, 0.1, 1, 1.0))
    write_run(root, "8_failed", seed=4, status="failed",
              error="Non-finite loss or gradient at step 7. Fix: lower optimizer.lr")
    unfinished = root / "9_unfinished" / ".hydra"  # Hydra wrote its config, the run never wrote metrics.json
    unfinished.mkdir(parents=True)
    (unfinished / "hydra.yaml").write_text("hydra:\n  job:\n    name: train\n")
    (unfinished / "config.yaml").write_text("seed: 5\ndataset: {name: FD001}\nloss: {name: gaba}\n"
                                            "rul_loss: {name: wmse}\nprotocol: {name: paper, selection: x}\n")
    diagnose = root / "diagnose_run" / ".hydra"  # not a training run: must not be listed
    diagnose.mkdir(parents=True)
    (diagnose / "hydra.yaml").write_text("hydra:\n  job:\n    name: diagnose\n")
    return root


def test_table_means_and_sample_stds(sweep: Path, capsys):
    main([str(sweep), "--no-plots"])
    table = pd.read_csv(sweep / "report.csv", keep_default_na=False, na_values=[""])
    gaba = table[(table.loss == "gaba") & (table.protocol == "paper") & (table.variant == "model=small")].iloc[0]
    assert (gaba.n_runs, gaba.n_seeds, gaba.seeds) == (3, 3, "1 2 3")
    # rmse 10, 12, 17: mean 13, deviations -3, -1, 4 -> sample variance (9 + 1 + 16) / 2 = 13
    assert gaba.rmse_last_mean == pytest.approx(13.0) and gaba.rmse_last_std == pytest.approx(math.sqrt(13.0))
    assert gaba.rmse_all_mean == pytest.approx(18.0) and gaba.rmse_all_std == pytest.approx(math.sqrt(13.0))
    assert gaba.nasa_mean == pytest.approx(300.0) and gaba.nasa_std == pytest.approx(100.0)
    assert gaba.health_acc_mean == pytest.approx(0.6) and gaba.health_acc_std == pytest.approx(0.1)
    assert gaba.best_epoch_mean == pytest.approx(20.0) and gaba.best_epoch_std == pytest.approx(10.0)
    assert gaba.wall_time_s_mean == pytest.approx(110.0) and gaba.wall_time_s_std == pytest.approx(10.0)
    holdout = table[table.protocol == "holdout"].iloc[0]
    assert holdout.rmse_last_mean == pytest.approx(15.0) and holdout.rmse_last_std == pytest.approx(math.sqrt(2.0))
    amnl = table[table.loss == "amnl"].iloc[0]
    assert amnl.rmse_last_mean == 20.0 and math.isnan(amnl.rmse_last_std)  # one seed: no sample std
    single = table[table.loss == "single_task"].iloc[0]
    assert math.isnan(single.health_acc_mean)  # absent, not zero
    beta = table[table.variant == "loss.controller.beta=0.9 model=small"].iloc[0]
    assert beta.rmse_last_mean == 99.0  # a different setting is its own row, never averaged in
    assert len(table) == 5

    text = (sweep / "report.md").read_text()
    assert text == capsys.readouterr().out.split("\n-> ")[0]  # printed as written
    tables = [line for line in text.split("## Paired")[0].splitlines() if line.startswith("### ")]
    assert tables == ["### FD001 (protocol=holdout)", "### FD001 (protocol=paper)"]
    assert f"Selection: {SELECTION['paper']}." in text and f"Selection: {SELECTION['holdout']}." in text
    assert ("| gaba | wmse | model=small | 3 | 1 2 3 | 13.000 ± 3.606 | 18.000 ± 3.606 | 300.0 ± 100.0 | "
            "0.600 ± 0.100 |") in text
    assert "| amnl | wmse | model=small | 1 | 1 | 20.000 | 25.000 | 500.0 | 0.800 |" in text
    assert "| single_task | wmse | model=small | 1 | 1 | 30.000 | 35.000 | 900.0 | — |" in text


def test_failed_and_unfinished_runs_are_listed(sweep: Path):
    main([str(sweep), "--no-plots"])
    runs = pd.read_csv(sweep / "runs.csv")
    assert len(runs) == 10  # 8 completed + failed + unfinished; the diagnose folder is not a training run
    failed = runs[runs.status == "failed"].iloc[0]
    assert failed.seed == 4 and "Non-finite loss" in failed.error
    unfinished = runs[runs.status == "unfinished"].iloc[0]
    assert (unfinished.seed, unfinished.dataset, unfinished.loss) == (5, "FD001", "gaba")
    assert "no metrics.json" in unfinished.error
    text = (sweep / "report.md").read_text()
    section = text.split("## Failed or unfinished runs")[1]
    assert "| failed | paper | FD001 | gaba | 4 | Non-finite loss or gradient at step 7. Fix: lower optimizer.lr |" \
        in section
    assert "| 9_unfinished | unfinished | paper | FD001 | gaba | 5 | no metrics.json" in section  # relative name
    assert runs.run.tolist()[:2] == ["0_gaba", "1_gaba"]


# results folders that hold runs the report already has from another folder (the same commands again: for the
# intervals' calibration, and without the test trace), which would count twice
RERUNS = {"results/cpu_intervals", "results/selection_inflation_without_trace"}
NOT_RUNS = {"results/plain_curve",  # the plain loop's own files (benchmarks/plain_reference.py), no framework runs
            "results/profile_tuning"}  # tuning studies: trials, no scored runs


def test_committed_results_regenerate_byte_for_byte_from_another_checkout(tmp_path: Path):
    """A fresh clone elsewhere: the committed results copied away, the report rebuilt there by results/README.md's
    own command (every sweep folder but the reruns of runs already in it, which would count twice)."""
    clone = tmp_path / "elsewhere"
    shutil.copytree(REPO / "results", clone / "results")
    command = re.search(r"`python -m grace_lit\.report ([^`]*)`", (REPO / "results" / "README.md").read_text())
    args = command.group(1).split()
    sweeps = [a for a in args if a.startswith("results/")]
    folders = {p.relative_to(clone).as_posix() for p in (clone / "results").iterdir() if p.is_dir()}
    assert set(sweeps) == folders - RERUNS - NOT_RUNS
    made = subprocess.run([sys.executable, "-m", "grace_lit.report", *args], cwd=clone, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    for name in ("report.md", "report.csv", "runs.csv", "paired.csv"):
        assert (clone / "results" / name).read_bytes() == (REPO / "results" / name).read_bytes(), name
    for path in (REPO / "results").rglob("*"):  # no committed file names the checkout that produced it
        if path.is_file() and path.suffix in (".yaml", ".log", ".csv", ".md", ".json"):
            assert str(REPO) not in path.read_text() and "/work/" not in path.read_text(), path


def test_test_truth_and_gabas_floor_from_the_run_folders(tmp_path: Path):
    """The cap of the test truth: metrics.json's, else the saved config's, else none recorded (an old run, which
    capped); a table mixing them gets a column. GABA's floor from controller_log.csv and the config's
    min_weight; the Friedman section refuses two arms in one line. The report goes to a folder that does not
    exist yet, beside the runs' (the runs are then named ../../runs/<run>)."""
    tmp_path, out = tmp_path / "runs", tmp_path / "elsewhere" / "report"
    config = ("dataset: {{name: FD001, max_rul: 125, cap_test_rul: {cap}}}\n"
              "loss: {{name: {loss}, controller: {{min_weight: 0.05, warmup_steps: 100}}}}\n")
    weights = [0.5, 0.3, 0.0476, 0.0477]  # steps 50, 100, 150, 200: the floored weight reads 0.05 / 1.05
    for seed in (1, 2):
        for loss, cap, recorded in (("gaba", "true", None), ("amnl", "true", False)):  # metrics.json wins
            run = write_run(tmp_path, f"{loss}_{seed}", protocol="holdout", loss=loss, seed=seed,
                            **({} if recorded is None else {"cap_test_rul": recorded}),
                            **metrics(15.0 + seed, 300.0, 0.8, 3, 10.0))
            (run / ".hydra").mkdir()
            (run / ".hydra" / "config.yaml").write_text(config.format(cap=cap, loss=loss))
            (run / "controller_log.csv").write_text("epoch,step,weight_rul,weight_health\n" + "".join(
                f"{e},{50 * (e + 1)},{w},{1 - w}\n" for e, w in enumerate(weights[:4 - seed + 1])))
    write_run(tmp_path, "old", protocol="holdout", loss="dwa", seed=1, **metrics(18.0, 300.0, 0.8, 3, 10.0))
    main([str(tmp_path), "--out", str(out), "--no-plots"])
    runs = pd.read_csv(out / "runs.csv")
    runs.index = [Path(r).name for r in runs.pop("run")]
    assert runs.loc["gaba_1", "cap_test_rul"] and not runs.loc["amnl_1", "cap_test_rul"]
    assert pd.isna(runs.loc["old", "cap_test_rul"]) and runs.loc["gaba_1", "max_rul"] == 125
    text = (out / "report.md").read_text()
    assert ("Protocol: holdout. Test truth differs (see the test truth column): capped at 125 in 2 runs, capped at "
            "max_rul in 1 runs, not capped in 2 runs; 1 of them record no dataset.cap_test_rul") in text
    assert "| amnl | wmse | model=small | not capped | 2 | 1 2 | 16.500 ± 0.707 |" in text
    assert "| gaba | wmse | model=small | capped at 125 | 2 | 1 2 | 16.500 ± 0.707 |" in text
    assert "Friedman test not run: it needs at least 3 arms and 2 blocks" in text
    floor = text.split("## GABA's RUL weight over training")[1]
    assert "Test truth: capped at 125 in every GABA run (2 runs)." in floor
    # seed 1: four epochs, two at the floor (from epoch 2); seed 2: three, one; after the warmup (epochs that
    # began at step 100 or later: the third and fourth) 0.0476 to 0.0477
    assert ("| holdout | FD001 | gaba + wmse [model=small] | 0.05 | 2 | 1 2 | 3/7 epochs (43%) | 2 | 0.0476–0.0477 "
            "| no (0 of 2 runs) |") in floor


def test_no_runs_is_a_clear_error(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--no-plots"])
    assert exit_info.value.code == 1
    assert "No runs" in capsys.readouterr().err


def test_variant_keeps_only_settings_that_change_a_run():
    overrides = ["seed=3", "dataset=FD002", "loss=amnl", "logger=mlflow", "paths.data_dir=/x",
                 "trainer.max_epochs=2", "loss.controller.beta=0.9", "~callbacks.ema"]
    assert variant(overrides) == "loss.controller.beta=0.9 trainer.max_epochs=2 ~callbacks.ema"


RUN_PLOTS = ["learning_curves.png", "lr_weight_decay.png", "controller_weights.png", "predictions_last.png",
             "trajectories.png"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_cache) -> Path:
    run = tmp_path_factory.mktemp("tiny") / "run"
    env = {**cli_env(data_cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "grace_lit.train", "dataset=FD001", "model=small",
                           "trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
                           "loss.controller.warmup_steps=3", f"hydra.run.dir={run}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_every_plot_is_a_non_empty_png(tiny_run: Path, data_cache):
    env = {**cli_env(data_cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "grace_lit.report", str(tiny_run), "--trajectory-units", "3"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "### FD001 (protocol=paper)" in done.stdout and "warning: plots of" not in done.stderr
    assert "## GABA's RUL weight over training" in done.stdout and "report_gaba_weights_paper.png" in done.stdout
    for path in [tiny_run / "report_paper.png", tiny_run / "report_gaba_weights_paper.png",
                 *(tiny_run / "plots" / name for name in RUN_PLOTS)]:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, path


def test_replay_reproduces_the_scored_predictions(tiny_run: Path, data_cache, monkeypatch):
    """The trajectory plot re-scores the selected checkpoint (EMA shadow included): its last windows must be
    the predictions the test scored."""
    monkeypatch.setenv("GRACE_LIT_DATA_DIR", str(data_cache))
    windows = window_predictions(tiny_run, 3)
    scored = pd.read_csv(tiny_run / "predictions.csv").set_index("unit")
    last = windows[windows.is_last].set_index("unit")
    assert len(last) == 3
    assert sorted(last.rul_true) == sorted(scored.rul_true)[:3]  # the three units closest to failure
    assert (last.rul_pred - scored.rul_pred.reindex(last.index)).abs().max() < 1e-4
    for _, rows in windows.groupby("unit"):  # every window, one cycle apart (eval_stride 1), the last at 0
        assert rows.cycle.tolist() == list(range(1 - len(rows), 1)) and len(rows) > 30


def test_the_scores_against_the_raw_truth_stand_beside_the_capped_ones(tmp_path: Path):
    for seed, (capped, raw) in enumerate([(13.0, 20.0), (15.0, 24.0)], start=1):
        write_run(tmp_path, f"run_{seed}", seed=seed, cap_test_rul=True, max_rul=125,
                  **metrics(capped, 300.0, 0.5, 3, 10.0), **{"test/rmse_last_raw": raw, "test/nasa_raw": 900.0})
    main([str(tmp_path), "--no-plots"])
    row = pd.read_csv(tmp_path / "report.csv").iloc[0]
    assert (row.rmse_last_mean, row.rmse_last_raw_mean, row.nasa_raw_mean) == (14.0, 22.0, 900.0)
    text = (tmp_path / "report.md").read_text()
    assert "test RMSE vs raw truth (last window) | test NASA score vs raw truth |" in text
    assert "| 14.000 ± 1.414 | 19.000 ± 1.414 | 300.0 ± 0.0 | 0.500 ± 0.000 | 22.000 ± 2.828 | 900.0 ± 0.0 |" in text


def test_campaign_tables_in_the_readmes_are_what_the_committed_runs_give():
    """The campaign README's tables (the controllers across subsets, GRACE against the plain loop, one per subset)
    are what results/cpu_campaign/tables.py prints from the committed runs.csv, paired.csv and plain_reference/."""
    out = subprocess.run([sys.executable, "results/cpu_campaign/tables.py"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    controllers, plain, *subsets = out.strip().split("\n\n")
    campaign = (REPO / "results/cpu_campaign/README.md").read_text()
    assert controllers in campaign and plain in campaign
    assert controllers.splitlines()[2].startswith("| GRACE | ")
    assert subsets[0::2] == ["FD001:", "FD002:", "FD003:", "FD004:"]
    assert all(f"{name}\n\n{table}" in campaign for name, table in zip(subsets[0::2], subsets[1::2]))


def test_tuned_campaign_tables_in_its_readme_are_what_the_committed_runs_give():
    """results/tuned_campaign/README.md's tables (each subset's controllers, then every controller beside the first
    campaign, paired by seed) are what its tables.py prints from the committed runs.csv and paired.csv files."""
    out = subprocess.run([sys.executable, "results/tuned_campaign/tables.py"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    *subsets, beside = out.strip().split("\n\n")
    readme = (REPO / "results/tuned_campaign/README.md").read_text()
    assert subsets[0] == "FD001:" and beside.startswith("| controller | subset | first campaign") and beside in readme
    assert all(f"{name}\n\n{table}" in readme for name, table in zip(subsets[0::2], subsets[1::2]))


def test_the_readme_controller_table_is_what_the_committed_runs_give():
    """The project README's Results table is tables.py --readme: the tuned campaign's controllers on every subset,
    the first campaign's runs where a subset has no tuned runs, from the committed runs.csv files."""
    out = subprocess.run([sys.executable, "results/tuned_campaign/tables.py", "--readme"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert out.splitlines()[0].startswith("| controller | FD001 | FD002 | FD003")
    assert out.splitlines()[2].startswith("| GRACE | ") and out in (REPO / "README.md").read_text()
    runs = sorted((REPO / "results/tuned_campaign/FD004_grace_holdout").glob("s*/metrics.json"))
    grace = pd.Series([json.loads(path.read_text())["test/rmse_last"] for path in runs])  # the run files themselves
    assert len(grace) == 5 and out.splitlines()[2].endswith(f"| {grace.mean():.2f} ± {grace.std():.2f} |")


# ------------------------------------------------------------------ environments
ENV = {"python": "3.12.3", "torch": "2.13.0+cpu", "lightning": "2.6.6", "numpy": "2.3.1", "kernels": "cpu AVX512"}


def test_a_report_says_none_of_its_runs_records_an_environment(sweep: Path):
    main([str(sweep), "--no-plots"])
    text = (sweep / "report.md").read_text()
    assert "Environment: none of the 8 runs records one" in text  # the fixture's 8 completed runs
    assert "Warning" not in text


def test_a_report_warns_when_pooled_runs_come_from_several_environments(tmp_path: Path, capsys):
    """Two environments in one cell (torch differs), a run without a record: the warning names the field, its
    values with their run counts, and the runs without a record; a cell of one environment gets no warning."""
    for seed, torch_ in [(1, "2.13.0+cpu"), (2, "2.13.0+cpu"), (3, "2.6.0")]:
        write_run(tmp_path, f"gaba_{seed}", seed=seed, environment={**ENV, "torch": torch_},
                  **metrics(10.0 + seed, 300.0, 0.5, 3, 10.0))
    write_run(tmp_path, "amnl_1", loss="amnl", seed=1, **metrics(12.0, 300.0, 0.5, 3, 10.0))
    write_run(tmp_path, "amnl_2", loss="amnl", seed=2, environment=ENV, **metrics(12.0, 300.0, 0.5, 3, 10.0))
    main([str(tmp_path), "--no-plots"])
    text = (tmp_path / "report.md").read_text()
    assert text in capsys.readouterr().out  # the console shows what report.md says
    assert ("**Warning: the runs come from 2 environments**, and the same seed gives other digits in another one "
            "(docs/reliability.md): torch 2.13.0+cpu (3 runs), 2.6.0 (1 run). 1 of the 5 runs record none") in text
    assert ("**Warning: the gaba + wmse [model=small] runs average several environments**: torch 2.13.0+cpu "
            "(2 runs), 2.6.0 (1 run).") in text
    assert "amnl + wmse [model=small] runs average" not in text  # one recorded environment and one without
    assert pd.read_csv(tmp_path / "runs.csv")["environment"].notna().sum() == 4


def test_one_shared_environment_is_named_once(tmp_path: Path):
    for seed in (1, 2):
        write_run(tmp_path, f"gaba_{seed}", seed=seed, environment=ENV, **metrics(11.0, 300.0, 0.5, 3, 10.0))
    main([str(tmp_path), "--no-plots"])
    text = (tmp_path / "report.md").read_text()
    assert ("Environment: one for every run that records it (python 3.12.3, torch 2.13.0+cpu, lightning 2.6.6, "
            "numpy 2.3.1, kernels cpu AVX512).") in text and "Warning" not in text


# ------------------------------------------------------------------ LaTeX
def unescaped(text: str, char: str) -> list[str]:
    """``text`` split on ``char`` where no backslash escapes it."""
    return re.split(r"(?<!\\)" + re.escape(char), text)


def tabulars(tex: str) -> list[list[list[str]]]:
    """Every tabular's rows as cells, after checking what a LaTeX compiler would choke on: unbalanced braces,
    a row whose cell count is not its column spec's, an odd number of $ in a cell, a booktabs rule missing."""
    braces = 0
    for char in re.sub(r"\\[{}]", "", tex):
        braces += {"{": 1, "}": -1}.get(char, 0)
        assert braces >= 0
    assert braces == 0
    found = re.findall(r"\\begin\{tabular\}\{([lcr]+)\}\n(.*?)\\end\{tabular\}", tex, re.S)
    assert len(found) == tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") > 0
    tables = []
    for spec, body in found:
        lines = body.strip().splitlines()
        assert lines[0] == "\\toprule" and lines[2] == "\\midrule" and lines[-1] == "\\bottomrule", lines
        rows = [unescaped(line.removesuffix(" \\\\"), "&") for line in lines if line.endswith("\\\\")]
        assert len(rows) == len(lines) - 3
        for row in rows:
            assert len(row) == len(spec), row
            assert all(len(unescaped(cell, "$")) % 2 for cell in row), row
        tables.append([[cell.strip() for cell in row] for row in rows])
    return tables


def compiles(tex: str, where: Path) -> None:
    """With pdflatex installed, the tables compile in a minimal document (otherwise parsing is the check)."""
    if shutil.which("pdflatex") is None:
        return
    (where / "doc.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
                                   f"{tex}\n\\end{{document}}\n")
    made = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=where,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout[-3000:]


def test_latex_tables_bold_the_best_mean_and_show_the_paired_differences(tmp_path: Path):
    """FD001: gaba 10, 12, 17 (13 ± 3.606), amnl 11, 12, 13 (12 ± 1: bold), amnl - gaba = 1, 0, -4 (-1.000);
    FD002: gaba 20, 21, 22 (21 ± 1: bold), amnl 23, 25, 27 (25 ± 2). Test truth capped at 125."""
    runs = tmp_path / "runs"
    values = {("FD001", "gaba"): [10.0, 12.0, 17.0], ("FD001", "amnl"): [11.0, 12.0, 13.0],
              ("FD002", "gaba"): [20.0, 21.0, 22.0], ("FD002", "amnl"): [23.0, 25.0, 27.0]}
    for (dataset, loss), rmses in values.items():
        for seed, rmse in enumerate(rmses, start=1):
            write_run(runs, f"{dataset}_{loss}_{seed}", dataset=dataset, loss=loss, seed=seed, cap_test_rul=True,
                      max_rul=125, **metrics(rmse, 100.0 * seed, 0.5, 3, 10.0))
    main([str(runs), "--no-plots", "--latex", "--out", str(tmp_path / "out")])
    tex = (tmp_path / "out" / "report.tex").read_text()
    rmse, nasa = tabulars(tex)
    assert rmse[0] == ["arm", "FD001", "$\\Delta$ FD001", "FD002", "$\\Delta$ FD002"]
    paired = pd.read_csv(tmp_path / "out" / "paired.csv").set_index("dataset")
    assert rmse[1] == ["gaba + wmse", "$13.000 \\pm 3.606$", "--", "$\\mathbf{21.000 \\pm 1.000}$", "--"]
    assert rmse[2] == ["amnl + wmse", "$\\mathbf{12.000 \\pm 1.000}$",
                       f"$-1.000$ {{\\scriptsize $[{paired.ci_low['FD001']:+.3f}, {paired.ci_high['FD001']:+.3f}]$}}",
                       "$25.000 \\pm 2.000$",
                       f"$+4.000$ {{\\scriptsize $[{paired.ci_low['FD002']:+.3f}, {paired.ci_high['FD002']:+.3f}]$}}"]
    assert 3.0 <= paired.ci_low["FD002"] <= paired.ci_high["FD002"] <= 5.0  # within the differences 3, 4, 5
    assert nasa[0] == ["arm", "FD001", "FD002"]  # NASA: no paired columns
    assert nasa[1][1] == nasa[2][1] == "$\\mathbf{200.0 \\pm 100.0}$"  # equal means: both bold
    assert tex.count("Protocol \\texttt{paper}: selection on test set (published protocol); test truth capped at "
                     "125.") == 2
    assert tex.count("Settings every row of a dataset shares: FD001, FD002: \\texttt{model=small}.") == 2
    compiles(tex, tmp_path)


def test_latex_tables_of_the_committed_cpu_campaign(tmp_path: Path):
    """The campaign's tables parse; GRACE's FD001 cell is what its five metrics.json files give; the committed
    results/cpu_campaign/report.tex is what the report writes."""
    main([str(REPO / "results/cpu_campaign"), "--no-plots", "--latex", "--out", str(tmp_path)])
    tex = (tmp_path / "report.tex").read_text()
    rmse = tabulars(tex)[0]
    scores = pd.Series([json.loads(p.read_text())["test/rmse_last"]
                        for p in (REPO / "results/cpu_campaign/FD001_grace_holdout").glob("s*/metrics.json")])
    assert len(scores) == 5
    assert rmse[1][:2] == ["gaba + wmse", f"${scores.mean():.3f} \\pm {scores.std(ddof=1):.3f}$"]
    assert "test truth capped at 125" in tex
    assert "FD002, FD004: \\texttt{budget=cpu\\_fd002 protocol.val\\_cuts=5}" in tex
    assert tex == (REPO / "results/cpu_campaign/report.tex").read_text()
    compiles(tex, tmp_path)
