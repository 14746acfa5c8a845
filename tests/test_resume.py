"""Deterministic resume: a run SIGKILLed mid-epoch and resumed from last.ckpt ends exactly
where an uninterrupted run with the same seed does (weights, metrics, metrics.csv)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, TINY_VIT, tiny_overrides

KILL = ["+callbacks.kill._target_=tests.helpers.KillAtStep"]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=900)


def _state(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def _rows(run: Path) -> list[dict]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_run(resumed: Path, straight: Path) -> None:
    a, b = _state(resumed / "checkpoints" / "last.ckpt"), _state(straight / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (resumed, straight))
    for key in ("test/acc", "test/auc", "val/auc_best", "objective"):
        if key in mb:
            assert ma[key] == mb[key] or (math.isnan(ma[key]) and math.isnan(mb[key])), key


@pytest.mark.slow  # ~40 s each on 2 cores: 3 training processes
@pytest.mark.parametrize("variant", [
    # last.ckpt saved at validation end (the default): the resume first finishes the saved
    # epoch, then every epoch is seeded before its iterator (and workers) start
    [],
    pytest.param(["data.num_workers=1"], marks=pytest.mark.slow),  # the same with a loader worker (~1 min)
    # no validation: last.ckpt saved at the end of each training epoch, so the resumed fit's first
    # epoch is a new one whose iterator Lightning created before set_epoch and the seeding
    ["trainer.limit_val_batches=0", "callbacks.model_checkpoint=null", "test_ckpt=last"],
], ids=["validation_end", "validation_end_workers", "train_epoch_end"])
def test_classifier_killed_mid_epoch_resumes_to_the_same_model(variant, data_root, tmp_path):
    common = ["experiment=quickstart", *tiny_overrides(data_root), "trainer.max_epochs=3", "data.batch_size=16",
              "data.augment.hflip=true", "data.augment.rotation=10", "data.sampler=oversample", *variant]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _cli([*common, f"hydra.run.dir={straight}"], tmp_path).returncode == 0
    steps = int(_rows(straight)[-1]["step"]) // 3  # steps per epoch
    proc = _cli([*common, f"hydra.run.dir={killed}", *KILL, f"+callbacks.kill.step={steps + steps // 2}"], tmp_path)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed in the middle of the second epoch
    assert (killed / "checkpoints" / "last.ckpt").is_file() and not (killed / "metrics.json").exists()
    proc = _cli([*common, f"hydra.run.dir={killed}", f"ckpt_path={killed}/checkpoints/last.ckpt"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(killed, straight)
    resumed_rows, straight_rows = _rows(killed), _rows(straight)
    assert [r["step"] for r in resumed_rows] == [r["step"] for r in straight_rows]  # appended, no duplicates
    assert [r.get("train/loss_epoch") for r in resumed_rows] == [r.get("train/loss_epoch") for r in straight_rows]
    assert [r.get("val/loss") for r in resumed_rows] == [r.get("val/loss") for r in straight_rows]


@pytest.mark.slow
def test_mlo_mae_pipeline_killed_in_pretraining_resumes_to_the_same_model(data_root, tmp_path):

    common = ["experiment=mlo_mae_small", *tiny_overrides(data_root), *TINY_VIT,
              "stages.pretrain.trainer.max_epochs=3", "stages.finetune.trainer.max_epochs=1",
              "++stages.pretrain.data.batch_size=16", "++stages.finetune.data.batch_size=16"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _cli([*common, f"hydra.run.dir={straight}"], tmp_path).returncode == 0
    steps = int(_rows(straight / "pretrain")[-1]["step"]) // 3
    proc = _cli([*common, f"hydra.run.dir={killed}", *[f"++stages.pretrain.{k[1:]}" for k in KILL],
                 f"++stages.pretrain.callbacks.kill.step={steps + steps // 2}"], tmp_path)
    assert proc.returncode == -9, proc.stderr[-2000:]
    proc = _cli([*common, f"hydra.run.dir={killed}"], tmp_path)  # the pipeline resumes from last.ckpt
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("pretrain", "finetune"):
        _assert_same_run(killed / stage, straight / stage)
