"""Spec 002 diagnostics: the threshold rules at their edges, the gradient measurement against a closed form, and
the CLI end to end (fresh and briefly trained model)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, cli_env, composed
from grace_lit.diagnose import gradient_pair, recommend, summary_lines


@pytest.fixture(scope="module")
def thresholds() -> dict:
    cfg = composed(config_name="diagnose")
    return OmegaConf.to_container(cfg.diagnose.thresholds)


def below(x: float) -> float:
    return float(np.nextafter(x, -np.inf))


def test_thresholds_are_the_spec_table(thresholds):
    assert thresholds == {"ratio": 10, "anti_aligned": -0.05, "aligned": 0.05, "strong": 0.20}


@pytest.mark.parametrize(("ratio", "cosine", "verdict"), [
    (below(10.0), 0.9, "AMNL"),          # ratio < 10 wins over any cosine
    (below(10.0), -0.9, "AMNL"),
    (10.0, 0.9, "GRACE"),                # ratio = 10 is not < 10: the cosine decides
    (100.0, below(-0.05), "single-task"),
    (100.0, -0.05, "AMNL"),              # -0.05 <= cos < 0.05
    (100.0, below(0.05), "AMNL"),
    (100.0, 0.05, "GABA"),               # 0.05 <= cos < 0.20
    (100.0, below(0.20), "GABA"),
    (100.0, 0.20, "GRACE"),              # cos >= 0.20
])
def test_verdict_at_the_threshold_edges(thresholds, ratio, cosine, verdict):
    got, rule = recommend(ratio, cosine, thresholds)
    assert got == verdict
    assert ("ratio" in rule) == (ratio < 10)  # the rule names what fired


def test_rule_text_names_the_threshold(thresholds):
    assert recommend(100.0, 0.31, thresholds)[1].startswith("cos +0.310 >= +0.2")
    assert recommend(5.0, 0.31, thresholds)[1].startswith("ratio 5 < 10")


def test_gradient_pair_matches_the_closed_form():
    """L0 = a.w + c.v, L1 = b.w (v unreached by L1): grad L0 = (a, c), grad L1 = (b, 0)."""
    a, b, c = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([3.0, -1.0, 0.5]), torch.tensor([4.0])
    w, v = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(1))
    losses = torch.stack([a @ w + c @ v, b @ w])
    g0, g1, cosine = gradient_pair(losses, [w, v])
    ga, gb = np.r_[a.numpy(), c.numpy()], np.r_[b.numpy(), 0.0]
    assert g0 == pytest.approx(np.linalg.norm(ga)) and g1 == pytest.approx(np.linalg.norm(gb))
    assert cosine == pytest.approx(ga @ gb / (np.linalg.norm(ga) * np.linalg.norm(gb)))


def run_diagnose(args: list[str], data_cache) -> subprocess.CompletedProcess:
    env = {**cli_env(data_cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "grace_lit.diagnose", "dataset=FD001", "model=small", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, data_cache) -> tuple[subprocess.CompletedProcess, dict]:
    """The diagnosis of an untrained model, seeds 1 and 2."""
    out = tmp_path_factory.mktemp("fresh")
    done = run_diagnose(["diagnose.n_batches=4", "diagnose.seeds=[1,2]", f"hydra.run.dir={out}"], data_cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (out / "controller_log.csv").exists()  # nothing trained
    return done, json.loads((out / "diagnose.json").read_text())


def test_cli_prints_and_writes_the_verdict(fresh, thresholds):
    done, result = fresh
    assert [s["seed"] for s in result["per_seed"]] == [1, 2] and all(s["n_batches"] == 4 for s in result["per_seed"])
    assert result["mean_ratio"] == pytest.approx(np.mean([s["ratio"] for s in result["per_seed"]]))
    assert result["mean_cosine"] == pytest.approx(np.mean([s["cosine"] for s in result["per_seed"]]))
    assert -1 <= result["mean_cosine"] <= 1 and result["mean_ratio"] >= 1 and math.isfinite(result["cosine_sem"])
    assert (result["verdict"], result["rule"]) == recommend(result["mean_ratio"], result["mean_cosine"], thresholds)
    assert f"verdict: {result['verdict']}" in done.stdout and result["rule"] in done.stdout
    assert result["train_epochs"] == 0 and result["dataset"] == "FD001"
    assert result["next"].startswith("python -m grace_lit.train dataset=FD001 model=small ")  # the model it ran
    assert f"next: {result['next']}" in done.stdout


def diagnosis(*seeds: tuple[int, float, float]) -> dict:
    """A diagnose.json as diagnose() writes it, for seeds of (seed, ratio, cosine)."""
    thresholds = {"ratio": 10, "anti_aligned": -0.05, "aligned": 0.05, "strong": 0.20}
    per_seed = [{"seed": s, "ratio": r, "cosine": c, "g_rul": 1.0, "g_health": 0.1, "n_batches": 50, "n_params": 10}
                for s, r, c in seeds]
    ratio, cosine = np.mean([r for _, r, _ in seeds]), np.mean([c for _, _, c in seeds])
    verdict, rule = recommend(ratio, cosine, thresholds)
    return {"dataset": "FD002", "rul_loss": "wmse", "train_epochs": 0, "seeds": [s for s, _, _ in seeds],
            "n_batches": 50, "per_seed": per_seed, "mean_ratio": ratio, "mean_cosine": cosine, "cosine_sem": 0.01,
            "thresholds": thresholds, "verdict": verdict, "rule": rule, "next": "python -m grace_lit.train ..."}


def test_seeds_that_disagree_in_sign_give_no_confident_verdict():
    """The case the issue reports: +0.076 (GABA alone) and -0.204 (single-task alone), single-task by the mean."""
    lines = "\n".join(summary_lines(diagnosis((42, 50.0, 0.076), (123, 60.0, -0.204))))
    assert "verdict: single-task by the mean, but UNCERTAIN: the seeds' cosines disagree in sign" in lines
    assert "seed 42: GABA at ratio 50, cos +0.076; seed 123: single-task at ratio 60, cos -0.204" in lines
    assert "diagnose.seeds=[42,123,1,2]" in lines
    agreeing = "\n".join(summary_lines(diagnosis((42, 50.0, 0.12), (123, 60.0, 0.08))))
    assert "UNCERTAIN" not in agreeing and "verdict: GABA  (" in agreeing
    imbalance_first = "\n".join(summary_lines(diagnosis((42, 5.0, 0.3), (123, 6.0, -0.3))))
    assert "UNCERTAIN" not in imbalance_first  # ratio < 10 decides before the cosine, for both seeds


def test_cli_after_brief_training_differs_from_fresh(fresh, tmp_path, data_cache):
    trained = run_diagnose(["diagnose.n_batches=4", "diagnose.seeds=[1]", "diagnose.train_epochs=1",
                            "trainer.limit_train_batches=3", f"hydra.run.dir={tmp_path}"], data_cache)
    assert trained.returncode == 0, trained.stderr[-3000:]
    before = fresh[1]["per_seed"][0]
    after = json.loads((tmp_path / "diagnose.json").read_text())
    assert after["train_epochs"] == 1 and after["train_loss"] == "gaba" and before["seed"] == 1
    assert after["per_seed"][0]["g_rul"] != pytest.approx(before["g_rul"])
    assert (tmp_path / "controller_log.csv").read_text().count("\n") == 2  # header + 1 trained epoch
    assert "after 1 epochs of loss=gaba" in trained.stdout


@pytest.mark.parametrize("preset", ["paper_FD002_grace", "paper_FD002_amnl", "paper_FD004_uncertainty"])
def test_paper_presets_use_the_spec_parameterisation(preset):
    """A plain RUL head (the ratio spec 002 reports); the default model keeps its head in units of max_rul."""
    cfg = composed([f"experiment={preset}"])
    assert cfg.model.rul_scale == 1 and cfg.model.backbone.hidden_size == 256
    assert composed(["dataset=FD002"]).model.rul_scale == 125
