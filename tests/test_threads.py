"""Config ``threads``: torch's intra-op threads per process, set by ``train.build`` before the model is built (so
also by grace_lit.tune and grace_lit.diagnose, which build through it) and said in the opening summary."""
from __future__ import annotations

import os

import pytest
import torch

from conftest import composed
from grace_lit.config import validate
from grace_lit.console import opening
from grace_lit.errors import Refused
from grace_lit.train import build

FAST = ["dataset=FD001", "model=small", "trainer=cpu"]


@pytest.fixture
def restored(monkeypatch):
    """torch's thread count and OMP_NUM_THREADS as they were before the test (build() sets both)."""
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # restored after the test
    yield before
    torch.set_num_threads(before)


def built(threads: str, tmp_path, data_cache, monkeypatch):
    monkeypatch.setenv("GRACE_LIT_DATA_DIR", str(data_cache))
    cfg = composed([*FAST, f"threads={threads}", f"paths.output_dir={tmp_path}"], hydra=True)
    return cfg, build(cfg)


def test_the_default_is_one_thread():
    assert composed()["threads"] == 1
    assert composed(config_name="diagnose")["threads"] == 1  # diagnose composes train's config


def test_build_sets_the_configured_threads_and_the_summary_says_so(restored, tmp_path, data_cache, monkeypatch):
    torch.set_num_threads(1)
    cfg, (_, module, trainer) = built("2", tmp_path, data_cache, monkeypatch)
    assert torch.get_num_threads() == 2
    assert os.environ["OMP_NUM_THREADS"] == "2"  # Lightning's DDP launcher keeps it, and its ranks inherit it
    text = opening(cfg, trainer, "small", 1, None)
    assert "2 threads), precision 32-true" in text and "; threads=2 (per process)" in text


def test_null_leaves_torchs_default(restored, tmp_path, data_cache, monkeypatch):
    torch.set_num_threads(2)  # whatever torch had: build() leaves it
    monkeypatch.delenv("OMP_NUM_THREADS")
    cfg, (_, _, trainer) = built("null", tmp_path, data_cache, monkeypatch)
    assert torch.get_num_threads() == 2 and "OMP_NUM_THREADS" not in os.environ
    assert "; threads=null: torch's default" in opening(cfg, trainer, "small", 1, None)


@pytest.mark.parametrize("value", ["0", "1.5", "two"])
def test_a_bad_thread_count_is_refused(value):
    with pytest.raises(Refused, match=f"threads={value!r}" if value == "two" else f"threads={value}"):
        validate(composed([f"threads={value}"]))
