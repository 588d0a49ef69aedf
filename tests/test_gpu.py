"""The GPU path, through the public entry points (``grace_lit.train.build`` + ``Trainer``, and the CLI).

Every test runs on the CPU and on CUDA except the CLI runs' equalities (same command, resume, a checkpoint
scored by another process), which run on CUDA only: on the CPU, tests/test_resume.py and tests/test_predict.py
check the same things. The CUDA cases carry the ``gpu`` marker (``pytest -m gpu`` runs only them, as
``benchmarks/gpu_window.py`` does) and are skipped without CUDA. Nothing here needs mlflow, submitit,
optuna or torchjd, which the GPU machine lacks. The distances of bf16-mixed, fused AdamW and torch.compile from
float32 are printed and recorded as junit properties (``--junitxml``).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import REPO, cli_env, composed
from grace_lit.callbacks.ema import EMAWeights
from grace_lit.data.windows import batch_as_is
from grace_lit.train import build

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                          reason="needs a CUDA GPU")])
DEVICES = ["cpu", CUDA]
TRAINER = {"cpu": "trainer=cpu", "cuda": "trainer=gpu"}
TINY = ["dataset=FD001", "model=small", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "data.batch_size=64"]
SGD = ["optimizer._target_=torch.optim.SGD", "~optimizer.betas", "~optimizer.eps"]
CONTROLLERS = ["gaba", "amnl", "gradnorm", "uncertainty", "fixed", "single_task"]


@pytest.fixture(autouse=True)
def data_dir(data_cache, monkeypatch):
    monkeypatch.setenv("GRACE_LIT_DATA_DIR", str(data_cache))


def built(device: str, out: Path, *overrides: str):
    cfg = composed([*TINY, TRAINER[device], f"paths.output_dir={out}", *overrides], hydra=True)
    L.seed_everything(cfg.seed, workers=True)
    return build(cfg)


def fit(device: str, out: Path, *overrides: str, callbacks: tuple = ()) -> tuple:
    data, module, trainer = built(device, out, *overrides)
    trainer.callbacks.extend(callbacks)
    initial = [p.detach().clone() for p in module.model.parameters()]
    trainer.fit(module, datamodule=data)
    return module, trainer, initial


def params(module) -> list[torch.Tensor]:
    return [p.detach().cpu().double() for p in module.model.parameters()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision,rtol", [("32-true", 1e-4), ("64-true", 1e-9)])
def test_fused_gaba_equals_the_three_pass_reference(device, precision, rtol, tmp_path):
    """Four GABA steps past its warmup, from the same start and batches: the parameters agree. SGD, so a
    float32 rounding difference is not magnified by Adam's normalisation of near-zero gradients."""
    args = [*SGD, "loss.controller.warmup_steps=0", "loss.controller.beta=0.5", f"trainer.precision={precision}"]
    fused, trainer, _ = fit(device, tmp_path / "fused", *args, "grad_mode=fused")
    reference, _, _ = fit(device, tmp_path / "reference", *args, "grad_mode=reference")
    assert trainer.global_step == 4 and next(fused.parameters()).dtype == {"32-true": torch.float32,
                                                                          "64-true": torch.float64}[precision]
    for a, b in zip(params(fused), params(reference)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("loss", CONTROLLERS)
def test_every_controller_takes_a_step(device, loss, tmp_path):
    gaba = ["loss.controller.warmup_steps=0"] if loss == "gaba" else []  # past the single-backward warmup
    module, trainer, initial = fit(device, tmp_path, f"loss={loss}", "trainer.limit_train_batches=2", *gaba)
    assert trainer.global_step == 2 and next(module.parameters()).device.type == device
    after = [p.detach() for p in module.model.parameters()]
    assert all(torch.isfinite(p).all() for p in after)
    moved = [not torch.equal(a, b) for a, b in zip(initial, after)]
    head = {id(p) for p in module.model.health_head.parameters()}
    for (p, changed) in zip(module.model.parameters(), moved):
        if id(p) in head and loss == "single_task":
            assert not changed  # frozen: the health head is not trained
    assert sum(moved) > len(moved) // 2


@pytest.mark.parametrize("device", DEVICES)
def test_device_batches_follow_the_host_loaders_order(device, tmp_path):
    data, _, trainer = built(device, tmp_path)
    data.trainer = trainer
    data.setup("fit")
    host, _, _ = built("cpu", tmp_path)
    host.setup("fit")  # no trainer: the windows stay on the host
    torch.manual_seed(7)
    ours = list(data.train_dataloader())
    torch.manual_seed(7)
    theirs = list(DataLoader(host.splits.train, batch_size=data.batch_size, shuffle=True, collate_fn=batch_as_is))
    assert ours[0][0].device.type == device and len(ours) == len(theirs) > 1
    for a, b in zip(ours, theirs):
        for x, y in zip(a, b):
            assert torch.equal(x.cpu(), y)


class EMAProbe(L.Callback):
    """Records the live parameters after every step and what the evaluation sees (after EMAWeights)."""

    def __init__(self) -> None:
        self.steps: list[list[torch.Tensor]] = []
        self.in_eval: list[torch.Tensor] | None = None
        self.after_eval: list[torch.Tensor] | None = None

    def _copy(self, module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in module.model.parameters()]

    def on_fit_start(self, trainer, module) -> None:
        self.steps.append(self._copy(module))

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.steps.append(self._copy(module))

    def on_validation_batch_start(self, trainer, module, *args) -> None:
        self.in_eval = self.in_eval or self._copy(module)

    def on_validation_end(self, trainer, module) -> None:
        self.after_eval = self._copy(module)


@pytest.mark.parametrize("device", DEVICES)
def test_ema_shadow_is_swapped_in_for_evaluation_and_the_live_weights_restored_exactly(device, tmp_path):
    probe, decay = EMAProbe(), 0.5
    _, trainer, _ = fit(device, tmp_path, f"callbacks.ema.decay={decay}", "trainer.limit_train_batches=3",
                        callbacks=(probe,))
    ema = next(c for c in trainer.callbacks if isinstance(c, EMAWeights))
    expected = [p.double() for p in probe.steps[0]]
    for step in probe.steps[1:]:  # the shadow's definition, in float64
        expected = [e + (1 - decay) * (p.double() - e) for e, p in zip(expected, step)]
    assert len(probe.steps) == 4
    for seen, shadow, exp in zip(probe.in_eval, ema.shadow, expected):
        assert torch.equal(seen, shadow)
        torch.testing.assert_close(seen.double(), exp, rtol=1e-5, atol=1e-6)
    for live, restored in zip(probe.steps[-1], probe.after_eval):
        assert torch.equal(live, restored)  # bit for bit
    assert any(not torch.equal(a, b) for a, b in zip(probe.in_eval, probe.after_eval))


CLI = ["dataset=FD001", "model=small", "trainer.limit_train_batches=5", "trainer.limit_val_batches=2",
       "trainer.limit_test_batches=2", "data.batch_size=64", "loss.controller.warmup_steps=2",
       "callbacks.lr_warmup.epochs=1", "callbacks.plateau.patience=0", "callbacks.ema.decay=0.5",
       "trainer.deterministic=true"]
EPOCHS = 3


def cli(run_dir: Path, data_cache: Path, device: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "grace_lit.train", *CLI, TRAINER[device],
                             f"hydra.run.dir={run_dir}", *extra], cwd=REPO, env=cli_env(data_cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


@pytest.fixture(scope="module", params=[CUDA])
def cli_runs(request, tmp_path_factory, data_cache) -> dict:
    """A and C: the same command; B: stopped after epoch 2 of 3 (a run that ends), resumed to epoch 3."""
    device, base = request.param, tmp_path_factory.mktemp(f"cli-{request.param}")
    runs = {name: base / name for name in "ABC"}
    procs = [cli(runs["A"], data_cache, device, f"trainer.max_epochs={EPOCHS}"),
             cli(runs["C"], data_cache, device, f"trainer.max_epochs={EPOCHS}"),
             cli(runs["B"], data_cache, device, f"trainer.max_epochs={EPOCHS - 1}")]
    for proc in procs:
        finish(proc)
    finish(cli(runs["B"], data_cache, device, f"trainer.max_epochs={EPOCHS}", "resume=true"))
    return runs


def numbers(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k not in ("wall_time_s", "cpu_time_s")}


def test_deterministic_runs_and_a_resumed_run_give_identical_metrics(cli_runs):
    a = numbers(cli_runs["A"])
    assert a["epochs_run"] == EPOCHS and a["test/rmse_last"] > 0
    assert numbers(cli_runs["C"]) == a
    assert numbers(cli_runs["B"]) == a
    for name in ("controller_log.csv", "predictions.csv"):
        text = (cli_runs["A"] / name).read_text()
        assert (cli_runs["C"] / name).read_text() == text and (cli_runs["B"] / name).read_text() == text


SCORE = """
import json, sys
import lightning as L
from hydra import compose, initialize_config_dir
import grace_lit.config
from grace_lit.train import build
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose("train", overrides=sys.argv[4:] + ["paths.output_dir=" + sys.argv[3]], return_hydra_config=True)
data, module, trainer = build(cfg)
trainer.test(module, datamodule=data, ckpt_path=sys.argv[2], weights_only=False, verbose=False)
print(json.dumps({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}))
"""


def test_a_checkpoint_scores_the_same_on_the_cpu(cli_runs, data_cache, tmp_path):
    """best.ckpt of run A, tested by a process that sees no GPU, reproduces A's test metrics."""
    out = subprocess.run([sys.executable, "-c", SCORE, str(REPO / "conf"), str(cli_runs["A"] / "checkpoints" /
                          "best.ckpt"), str(tmp_path), *CLI, "trainer=cpu"], env={**cli_env(data_cache),
                         "CUDA_VISIBLE_DEVICES": ""}, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    scored = json.loads(out.stdout.strip().splitlines()[-1])
    metrics = json.loads((cli_runs["A"] / "metrics.json").read_text())
    rtol = 1e-4  # another device's kernels: rounding differs
    assert scored.keys() >= {"test/rmse_last", "test/nasa", "test/health_acc"}
    for key, value in scored.items():
        assert value == pytest.approx(metrics[key], rel=rtol, abs=rtol), key


VARIANTS = {"bf16-mixed": ["trainer.precision=bf16-mixed"], "fused-adamw": ["optimizer.fused=true"],
            "compile": ["compile=true"]}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_options_train_finite_and_their_distance_from_float32(device, variant, tmp_path, record_property):
    if variant == "compile" and device == "cpu":
        pytest.skip("torch.compile is measured on CUDA only (on these CPUs it compiles for minutes)")
    base, _, initial = fit(device, tmp_path / "float32", "loss.controller.warmup_steps=0")
    fast, trainer, _ = fit(device, tmp_path / variant, "loss.controller.warmup_steps=0", *VARIANTS[variant])
    assert trainer.global_step == 4
    ours, theirs, start = params(fast), params(base), [p.cpu().double() for p in initial]
    assert all(torch.isfinite(p).all() for p in ours)
    moved = torch.cat([(b - s).flatten() for b, s in zip(theirs, start)]).norm()
    distance = float(torch.cat([(a - b).flatten() for a, b in zip(ours, theirs)]).norm() / moved)
    metric = trainer.callback_metrics["test/rmse_last"].item()
    print(f"{variant} on {device}: parameter distance from float32 {distance:.3g} of the float32 update; "
          f"test/rmse_last {metric:.4f}")
    record_property("distance_from_float32", distance)
    record_property("rmse_last", metric)
    assert distance < 1.0  # the same training, give or take rounding: well within one update of float32
