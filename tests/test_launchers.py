"""Running at scale: the joblib launcher with the sweep log, the SLURM launcher and DDP configs, and every
experiment preset composing to what its name says."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cli_env, composed
from grace_lit.sweep_log import job_line
from grace_lit.train import build

TINY = ["dataset=FD001", "model=small", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
PRESETS = sorted(p.stem for pattern in ("paper_*.yaml", "ablation_*.yaml")
                 for p in (REPO / "conf" / "experiment").glob(pattern))
SEEDS = [42, 123, 456, 789, 1024]


def train(args: list[str], data_cache: Path) -> subprocess.CompletedProcess:
    env = {**cli_env(data_cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "grace_lit.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_joblib_multirun_two_jobs(tmp_path, data_cache):
    """Two tiny jobs in parallel processes; the sweep prints one line per finished job."""
    run = train(["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2", *TINY,
                 f"hydra.sweep.dir={tmp_path}"], data_cache)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in run.stderr + run.stdout
    jobs = sorted(p.parent for p in tmp_path.glob("*/metrics.json"))
    results = [json.loads((j / "metrics.json").read_text()) for j in jobs]
    assert [(r["status"], r["seed"]) for r in results] == [("completed", 1), ("completed", 2)]
    lines = sorted(line for line in run.stdout.splitlines() if line.startswith("[job "))
    assert len(lines) == 2, run.stdout[-2000:]
    for num, (line, result) in enumerate(zip(lines, results)):
        assert re.match(rf"\[job {num}\] dataset=FD001 loss=gaba rul_loss=wmse protocol=paper seed={num + 1} "
                        rf"test/rmse_last={result['test/rmse_last']:.4g} test/rmse_all=\S+ test/nasa=\S+ "
                        rf"wall_time_s=\S+ completed \([12] of 2 done\)$",
                        line), line


def test_sweep_line_of_a_failed_job():
    line = job_line("3", {"status": "failed", "dataset": "FD002", "seed": 7, "error": "Non-finite loss\nFix: x"},
                    ["dataset", "seed", "test/rmse_last"], 12.34, error=RuntimeError("ignored"))
    assert line == "[job 3] dataset=FD002 seed=7 test/rmse_last=- failed: Non-finite loss (after 12.3s)"
    crashed = job_line("4", None, ["dataset"], 1.0, error=ValueError("boom"))
    assert crashed == "[job 4] dataset=- failed: boom (after 1.0s)"


def test_ddp_trainer_config_builds_a_ddp_trainer(tmp_path, data_cache, monkeypatch):
    monkeypatch.setenv("GRACE_LIT_DATA_DIR", str(data_cache))
    cfg = composed(["trainer=ddp", "trainer.accelerator=cpu", "model=small", f"paths.output_dir={tmp_path}"],
                   hydra=True)
    assert (cfg.trainer.strategy, cfg.trainer.devices) == ("ddp", 2)
    _, _, trainer = build(cfg)
    assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.num_devices == 2


def test_submitit_slurm_launcher_composes():
    """What ``--cfg hydra hydra/launcher=submitit_slurm`` prints, through the compose API (no cluster here)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launcher = composed(["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=1"], hydra=True)
    launcher = launcher.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_to_what_its_name_says(preset, tmp_path, data_cache, monkeypatch):
    monkeypatch.setenv("GRACE_LIT_DATA_DIR", str(data_cache))
    cfg = composed([f"experiment={preset}"], hydra=True)
    params = cfg.hydra.sweeper.params
    assert [int(s) for s in str(params.seed).split(",")] == SEEDS  # --multirun runs the spec's five seeds
    assert (cfg.protocol.name, cfg.model.backbone.hidden_size) == ("paper", 256)
    if preset.startswith("paper_"):
        _, dataset, method = preset.split("_", 2)  # method names may hold "_" (nash_mtl)
        assert (cfg.dataset.name, cfg.loss.name, cfg.rul_loss.name) == (dataset, {"grace": "gaba"}.get(method, method),
                                                                         "wmse")
        # the adaptive weight decay: GRACE's (spec 000) and AMNL's, whose own spec 003 applies it and accumulates 2
        awd = [0.5, 0.1] if method in ("grace", "amnl") else [1.0, 1.0]
        assert list(cfg.callbacks.weight_decay.factors) == awd
        assert cfg.accumulate == (2 if method == "amnl" else 1)
        return
    assert (cfg.dataset.name, cfg.loss.name) == ("FD002", "gaba")  # ablations of GRACE on the default dataset
    expected = {
        "ablation_no_ema": lambda: cfg.callbacks.ema is None,
        "ablation_no_warmup": lambda: cfg.callbacks.lr_warmup is None and cfg.callbacks.plateau.warmup_epochs == 0,
        "ablation_no_awd": lambda: cfg.callbacks.weight_decay is None,
        "ablation_mse": lambda: cfg.rul_loss.name == "mse",
        "ablation_gaba_beta": lambda: str(params["loss.controller.beta"]) == "0.9,0.95,0.99,0.999",
        "ablation_floor": lambda: str(params["loss.controller.min_weight"]) == "0.0,0.01,0.05,0.1",
        "ablation_warmup_steps": lambda: str(params["loss.controller.warmup_steps"]) == "0,10,100,1000",
    }
    assert expected[preset]()
    if cfg.callbacks.ema is None:  # a null stage is dropped by build(), not instantiated
        cfg = composed([f"experiment={preset}", "model=small", f"paths.output_dir={tmp_path}"], hydra=True)
        _, _, trainer = build(cfg)
        assert not any(type(c).__name__ == "EMAWeights" for c in trainer.callbacks)
