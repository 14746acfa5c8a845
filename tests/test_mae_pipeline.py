"""MAE pretraining module, fine-tuning from its checkpoint, and the stage pipeline."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from core.checkpoints import CheckpointMismatchError, load_encoder
from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.networks import vit_network
from lightning_modules.components.optim import cosine_with_warmup, param_groups
from lightning_modules.components.vit import ViTClassifier, ViTEncoder
from lightning_modules.mae import MAEPretrain
from pipeline.cli import train
from tests.helpers import TINY_VIT, assert_reported_test_metrics, compose_cfg, tiny_overrides

ARCH = dict(img_size=28, patch_size=4, embed_dim=32, depth=2, num_heads=2)


def _mae_module(in_chans=3, num_classes=7):
    enc = ViTEncoder(in_chans=in_chans, **ARCH)
    mae = MaskedAutoencoder(enc, 0.75, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    return MAEPretrain(mae, num_classes=num_classes, task="multi-class")


def _save_pretrain_ckpt(module, path: Path) -> Path:
    torch.save({"state_dict": module.state_dict()}, path)
    return path


def test_finetune_encoder_reproduces_pretraining_features(tmp_path):
    module = _mae_module()
    ckpt = _save_pretrain_ckpt(module, tmp_path / "pre.ckpt")
    net = vit_network(num_classes=7, in_chans=3, pretrained_ckpt=str(ckpt), **ARCH)
    x = torch.randn(4, 3, 28, 28)
    module.eval(), net.eval()
    torch.testing.assert_close(net.encoder(x), module.mae.encoder(x), rtol=0, atol=0)


def test_checkpoint_of_other_architecture_lists_mismatched_keys(tmp_path):
    ckpt = _save_pretrain_ckpt(_mae_module(), tmp_path / "pre.ckpt")
    deeper = ViTEncoder(in_chans=3, **{**ARCH, "depth": 3})
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: \['blocks\.2\."):
        load_encoder(deeper, ckpt)
    wider = ViTEncoder(in_chans=3, **{**ARCH, "embed_dim": 64})
    with pytest.raises(CheckpointMismatchError, match="shape of cls_token: checkpoint \\(1, 1, 32\\), model \\(1, 1, 64\\)"):
        load_encoder(wider, ckpt)


def test_channel_mismatch_is_named(tmp_path):
    ckpt = _save_pretrain_ckpt(_mae_module(in_chans=3), tmp_path / "pre.ckpt")
    with pytest.raises(CheckpointMismatchError, match="input channels: checkpoint 3, data 1.*as_rgb"):
        vit_network(num_classes=2, in_chans=1, pretrained_ckpt=str(ckpt), **ARCH)


def test_checkpoint_without_encoder_is_rejected(tmp_path):
    path = tmp_path / "cnn.ckpt"
    torch.save({"state_dict": {"net.features.0.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointMismatchError, match="holds no encoder weights"):
        vit_network(num_classes=2, in_chans=3, pretrained_ckpt=str(path), **ARCH)


def test_layer_decay_first_block_lr_below_last_after_scheduler_step():
    model = ViTClassifier(ViTEncoder(in_chans=3, **{**ARCH, "depth": 4}), num_classes=3)
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5, num_layers=4)
    opt = torch.optim.AdamW(groups)
    sched = cosine_with_warmup(opt, warmup_steps=0, total_steps=10)
    opt.step()
    sched.step()
    lr_of = {g["layer"]: g["lr"] for g in opt.param_groups}
    assert lr_of[1] < lr_of[4] < lr_of[5]  # block 0 < block 3 < head
    assert lr_of[1] / lr_of[4] == pytest.approx(0.5**3)
    assert lr_of[5] == pytest.approx(1e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 10)).item()))
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0]
    assert any(p is model.encoder.cls_token for g in no_decay for p in g["params"])


def test_probe_update_does_not_change_encoder():
    module = _mae_module()
    before = {k: v.clone() for k, v in module.mae.state_dict().items()}
    probe_opt = torch.optim.AdamW(module.probe.parameters(), lr=1e-2)
    x, y = torch.randn(8, 3, 28, 28), torch.randint(0, 7, (8,))
    feats = module.features(x).detach()
    loss = module.probe_criterion(module.probe(feats), y)
    loss.backward()
    assert all(p.grad is None for p in module.mae.parameters())
    probe_opt.step()
    after = module.mae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_reconstruct_panels_use_fixed_masks():
    module = _mae_module().eval()
    x = torch.randn(2, 3, 28, 28)
    a, b = module.reconstruct(x), module.reconstruct(x)
    assert torch.equal(a["masked"], b["masked"])
    visible = (a["masked"] != 0).float()
    torch.testing.assert_close(a["pasted"] * visible, x * visible)


def _pipeline_overrides(data_root, epochs=1):
    return [
        "experiment=mae_small", "data=dermamnist", *tiny_overrides(data_root), *TINY_VIT,
        f"stages.pretrain.trainer.max_epochs={epochs}", f"stages.finetune.trainer.max_epochs={epochs}",
        "++stages.pretrain.data.batch_size=32", "stages.finetune.data.batch_size=32",
        "stages.pretrain.callbacks.reconstructions.every_n_epochs=1",
    ]


@pytest.mark.slow
def test_pipeline_runs_stages_passes_checkpoint_and_resumes(data_root, tmp_path):
    metrics = train(compose_cfg(_pipeline_overrides(data_root), tmp_path))
    pre, fine = tmp_path / "pretrain", tmp_path / "finetune"
    assert (pre / "reconstructions" / "epoch_000.png").is_file()
    assert (fine / "predictions" / "test_predictions.npz").is_file()
    assert "pretrain/val/probe_auc" in metrics and "test/auc" in metrics
    root_report = (tmp_path / "report.md").read_text()
    assert "# Stage: pretrain" in root_report and "](pretrain/reconstructions/epoch_000.png)" in root_report
    assert f"{metrics['test/auc']:.4f}" in root_report
    assert root_report.splitlines()[2].startswith(  # the fixture's data are synthetic: said before any number
        "> **Synthetic data, not real data.** Every number, table and figure below was measured on images made by "
        "the synthetic generator in stage(s) pretrain, finetune")
    pre_info = json.loads((pre / "stage.json").read_text())
    fine_cfg = (fine / "config.yaml").read_text()
    assert f"pretrained_ckpt: {pre_info['best_checkpoint']}" in fine_cfg

    # Simulate an interruption of the fine-tuning stage, then run again in the same folder.
    (fine / "stage.json").unlink()
    pre_ckpt_mtime = Path(pre_info["last_checkpoint"]).stat().st_mtime_ns
    first_rows = _csv_rows(fine)
    train(compose_cfg(_pipeline_overrides(data_root, epochs=2), tmp_path))
    assert Path(pre_info["last_checkpoint"]).stat().st_mtime_ns == pre_ckpt_mtime  # pretrain not redone
    rows = _csv_rows(fine)
    # resumed after epoch 0 instead of restarting; the log of epoch 0 is kept once, then appended to
    keys = list(first_rows[0])
    assert [{k: r[k] for k in keys} for r in rows if r["epoch"] == "0"] == [r for r in first_rows if r["epoch"] == "0"]
    assert [r["epoch"] for r in rows if r.get("val/loss")] == ["0", "1"]
    assert json.loads((fine / "stage.json").read_text())["last_checkpoint"].endswith("last.ckpt")


def _csv_rows(run: Path) -> list[dict]:
    """``csv/metrics.csv`` rows with a value in every column that any row has (blank = '')."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_single_finetune_stage_from_given_checkpoint(data_root, tmp_path):
    module = _mae_module(in_chans=3)
    ckpt = _save_pretrain_ckpt(module, tmp_path / "pre.ckpt")
    cfg = compose_cfg(
        ["experiment=vit_small", "data=dermamnist", *tiny_overrides(data_root), "debug=fdr",
         "encoder.depth=2", "encoder.embed_dim=32", "encoder.num_heads=2", "encoder.patch_size=4",
         f"model.net.pretrained_ckpt={ckpt}", "data.batch_size=8"],
        tmp_path / "run",
    )
    model = instantiate(cfg.model, _convert_="all")
    torch.testing.assert_close(model.net.encoder.state_dict(), module.mae.encoder.state_dict())
    assert_reported_test_metrics(tmp_path / "run", train(cfg))  # the run from those weights trains and tests


def test_linear_probe_mode_trains_only_the_head(data_root, tmp_path):
    cfg = compose_cfg(
        ["experiment=vit_small", "data=dermamnist", *tiny_overrides(data_root), *TINY_VIT, "debug=fdr",
         "model.freeze_encoder=true", "data.batch_size=8"],
        tmp_path,
    )
    model = instantiate(cfg.model, _convert_="all")
    before = {k: v.clone() for k, v in model.net.encoder.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("net.head.") for n in trainable)
    from lightning import Trainer

    dm = instantiate(cfg.data, _convert_="all")
    Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
            default_root_dir=tmp_path).fit(model, dm)
    assert all(torch.equal(before[k], v) for k, v in model.net.encoder.state_dict().items())


def test_mixup_training_step(data_root, tmp_path):
    cfg = compose_cfg(
        ["experiment=vit_small", "data=dermamnist", *tiny_overrides(data_root), *TINY_VIT, "debug=fdr",
         "+model.mixup={mixup_alpha: 0.8, cutmix_alpha: 1.0}", "data.batch_size=8"],
        tmp_path,
    )
    assert "test/acc" in train(cfg)


@pytest.mark.slow
def test_an_mae_checkpoint_copied_alone_fine_tunes_through_init_from(data_root, tmp_path):
    pre = train(compose_cfg([*_pipeline_overrides(data_root), "stages.finetune=null"], tmp_path / "pre"))
    alone = tmp_path / "alone" / "mae.ckpt"  # no run folder, no config.yaml beside it
    alone.parent.mkdir()
    shutil.copy(pre["pretrain/best_checkpoint"], alone)
    stored = torch.load(alone, map_location="cpu", weights_only=True)["medmae"]
    assert stored["config"]["model"]["_target_"].endswith("MAEPretrain")
    assert stored["data"]["in_chans"] == 3 and len(stored["data"]["class_names"]) == 7

    overrides = [*_pipeline_overrides(data_root), "stages.pretrain=null", "stages.finetune.init_from.stage=null",
                 f"stages.finetune.init_from.ckpt={alone}"]
    metrics = train(compose_cfg(overrides, tmp_path / "fine"))
    assert "test/auc" in metrics
    assert f"pretrained_ckpt: {alone}" in (tmp_path / "fine" / "finetune" / "config.yaml").read_text()

    both = [*overrides[:-2], f"stages.finetune.init_from.ckpt={alone}"]  # stage pretrain (gone) and a file
    with pytest.raises(ValueError, match="names both stage 'pretrain' and the file"):
        train(compose_cfg(both, tmp_path / "both"))
