"""Pipeline stages composed by Hydra: what reaches which stage, in which order stages run, and
the errors for overrides that fit no stage."""

from __future__ import annotations

import logging

import pytest
import yaml

from pipeline.cli import train
from pipeline.stage_config import compose_stage, split_overrides
from pipeline.stages import stage_order
from tests.helpers import TINY_VIT, compose_cfg, tiny_overrides


def _stages(overrides: list[str], tmp_path) -> dict:
    cfg = compose_cfg(overrides, tmp_path)
    return {name: compose_stage(cfg, name, tmp_path / name) for name in stage_order(cfg)}


def test_each_layer_wins_in_order_stage_experiment_debug_command_line_stage_override(tmp_path):
    plain = _stages(["experiment=mae_derma"], tmp_path)
    assert (plain["pretrain"].data.batch_size, plain["finetune"].data.batch_size) == (128, 64)  # the stages' own
    assert plain["pretrain"].data.img_size == plain["finetune"].data.img_size == 32  # the experiment's, shared
    dermae = _stages(["experiment=dermae_derma"], tmp_path)  # sets data.img_size 32, its first stages 28
    assert [dermae[n].data.img_size for n in ("diffusion", "baseline", "pretrain", "finetune")] == [28, 28, 32, 32]

    debug = _stages(["experiment=mae_derma", "debug=fdr"], tmp_path)
    assert {s.data.batch_size for s in debug.values()} == {4}  # debug wins over the stages' keys
    assert all(s.trainer.fast_dev_run and s.data.num_workers == 0 for s in debug.values())

    cli = _stages(["experiment=mae_derma", "debug=fdr", "data.batch_size=16", "stages.finetune.data.batch_size=8"],
                  tmp_path)
    assert (cli["pretrain"].data.batch_size, cli["finetune"].data.batch_size) == (16, 8)


def test_stage_keys_group_choices_and_callbacks(tmp_path):
    stages = _stages(["experiment=mae_derma", "model=resnet18", "trainer=cpu"], tmp_path)
    pre, fine = stages["pretrain"], stages["finetune"]
    assert pre.model._target_.endswith("MAEPretrain")  # a stage's own group choice wins over model=...
    assert not {"net", "loss", "channels_last"} & set(pre.model)  # resnet18's / the run's model keys: replaced
    assert fine.model._target_.endswith("Classifier") and fine.model.net._target_.endswith("vit_network")
    assert pre.trainer.accelerator == fine.trainer.accelerator == "cpu"  # trainer=cpu reaches every stage
    assert pre.trainer.max_epochs == 200 and fine.trainer.max_epochs == 100  # ...under each stage's own keys
    assert (pre.monitor.metric, fine.monitor.metric) == ("val/probe_auc", "val/auc")
    assert pre.test is False and fine.test is True
    # The stage's callbacks join the default ones; a stage's null removes one.
    assert {"model_checkpoint", "reconstructions", "mask_maps"} <= set(pre.callbacks)
    assert pre.callbacks.early_stopping is None and fine.callbacks.early_stopping is not None
    assert "reconstructions" not in fine.callbacks
    assert "stages" not in pre and pre.paths.output_dir == str(tmp_path / "pretrain")

    other = _stages(["experiment=mae_derma", "model@stages.finetune.model=resnet18"], tmp_path)
    assert other["finetune"].model.net.name == "resnet18" and other["pretrain"].model._target_.endswith("MAEPretrain")
    assert "pooling" not in other["finetune"].model.net  # vit's network keys do not leak into resnet18's


def test_one_stage_overrides_set_add_and_delete_for_that_stage_only(tmp_path):
    stages = _stages(["experiment=mae_small", "stages.pretrain.model.optimizer._target_=torch.optim.SGD",
                      "~stages.pretrain.model.optimizer.betas", "+stages.pretrain.model.optimizer.momentum=0.5",
                      "++stages.finetune.trainer.max_time=00:00:10:00"], tmp_path)
    pre, fine = stages["pretrain"].model.optimizer, stages["finetune"].model.optimizer
    assert pre._target_ == "torch.optim.SGD" and pre.momentum == 0.5 and "betas" not in pre
    assert fine._target_ == "torch.optim.AdamW" and "momentum" not in fine
    assert stages["finetune"].trainer.max_time == "00:00:10:00" and "max_time" not in stages["pretrain"].trainer


def test_split_overrides_routes_by_stage_and_keeps_pipeline_keys():
    common, own = split_overrides(
        ["seed=1", "debug=fdr", "++stages.pretrain.data.batch_size=32", "+stages.pretrain.trainer.max_time=1",
         "~stages.finetune.model.optimizer.betas", "stages.finetune.init_from.ckpt=last", "stages.pretrain=null",
         "stages.finetune.data.batch_size=8", "model@stages.finetune.model=resnet18",
         "stages.finetune.data.root='/a b/c=d'", "++stages.other.x=1"], ["pretrain", "finetune"])
    assert common == ["seed=1", "debug=fdr", "model@stages.finetune.model=resnet18"]  # choices travel as choices
    assert own == {"pretrain": ["++data.batch_size=32", "++trainer.max_time=1"],
                   "finetune": ["~model.optimizer.betas", "data.batch_size=8", "data.root='/a b/c=d'"]}


def test_a_command_line_value_that_fits_no_stage_names_the_stage(tmp_path):
    cfg = compose_cfg(["experiment=mae_derma", "model.loss.label_smoothing=0.1"], tmp_path)  # a classifier key
    assert compose_stage(cfg, "finetune", tmp_path).model.loss.label_smoothing == 0.1
    with pytest.raises(ValueError, match=r"stage 'pretrain'.*model.loss(.|\n)*stages\.pretrain\.<key>=<value>"):
        compose_stage(cfg, "pretrain", tmp_path)


def test_a_command_line_value_over_a_stage_value_is_announced(tmp_path, caplog):
    cfg = compose_cfg(["experiment=mae_small", "data.label_fraction=0.1"], tmp_path)
    with caplog.at_level(logging.WARNING, logger="train"):
        pre = compose_stage(cfg, "pretrain", tmp_path)
    assert pre.data.label_fraction == 0.1
    assert "stage 'pretrain' sets data.label_fraction=1.0" in caplog.text
    assert "stages.pretrain.data.label_fraction=" in caplog.text
    cfg = compose_cfg(["experiment=mae_small", "model=resnet18"], tmp_path)
    with caplog.at_level(logging.WARNING, logger="train"):
        compose_stage(cfg, "pretrain", tmp_path)
    assert "stage 'pretrain' chooses model=mae itself; the command line's model=resnet18 does not reach it" in caplog.text
    # A stage's callbacks list is its whole set: callbacks=none reaches the stages that have none of their own.
    cfg = compose_cfg(["experiment=mae_small", "callbacks=none"], tmp_path)
    pre, fine = compose_stage(cfg, "pretrain", tmp_path), compose_stage(cfg, "finetune", tmp_path)
    assert "model_checkpoint" in pre.callbacks and "mask_maps" in pre.callbacks and not any(fine.callbacks.values())


def test_a_stage_that_trains_without_a_model_is_refused(tmp_path):
    cfg = compose_cfg(["experiment=mae_small", "++stages.pretrian.model.lr=0.1"], tmp_path)  # a typo
    with pytest.raises(ValueError, match="stages.pretrian trains but chooses no model"):
        compose_stage(cfg, "pretrian", tmp_path)


def test_stages_run_after_the_stages_they_read_from(tmp_path):
    cfg = compose_cfg(["experiment=dermae_small"], tmp_path)
    assert list(cfg.stages)[-2:] == ["synthesize", "export"]  # Hydra puts the stages from defaults first
    assert stage_order(cfg) == ["diffusion", "baseline", "synthesize", "pretrain", "finetune", "distill", "export"]
    with pytest.raises(ValueError, match=r"stages.finetune reads from stage\(s\) \['pretrain'\], which this "):
        stage_order(compose_cfg(["experiment=mae_small", "stages.pretrain=null"], tmp_path))
    with pytest.raises(ValueError, match="in a cycle"):
        stage_order(compose_cfg(["experiment=mae_small", "++stages.pretrain.init_from={stage: finetune}"], tmp_path))


def _ran_with_debug_settings(run_dir) -> None:
    for stage in ("pretrain", "finetune"):
        cfg = yaml.safe_load((run_dir / stage / "config.yaml").read_text())
        assert cfg["trainer"]["fast_dev_run"] is True and cfg["trainer"]["accelerator"] == "cpu", stage
        assert cfg["data"]["batch_size"] == cfg["data"]["eval_batch_size"] == 4, stage
        assert cfg["task_name"] == "debug", stage
    assert (run_dir / "finetune" / "predictions" / "test_predictions.npz").is_file()


def test_debug_reaches_every_stage_of_mae_derma(data_root, tmp_path):
    """``python train.py experiment=mae_derma debug=fdr trainer=cpu`` with a one-block ViT."""
    train(compose_cfg(["experiment=mae_derma", "debug=fdr", "trainer=cpu", *tiny_overrides(data_root), *TINY_VIT],
                      tmp_path))
    _ran_with_debug_settings(tmp_path)


@pytest.mark.slow
def test_debug_reaches_every_stage_of_full_size_mae_derma(data_root, tmp_path):
    """The same at full size (ViT-B, patch 2, 32 px): about a minute on a 2-core CPU."""
    train(compose_cfg(["experiment=mae_derma", "debug=fdr", "trainer=cpu", *tiny_overrides(data_root)], tmp_path))
    _ran_with_debug_settings(tmp_path)


def test_an_experiment_outside_conf_reaches_its_stages_through_the_searchpath(tmp_path):
    from pipeline.cli import CONF_DIR

    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    text = (CONF_DIR / "experiment" / "mae_small.yaml").read_text().replace("task_name: mae_small", "task_name: mine")
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(text)
    cfg = compose_cfg([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=mine"], tmp_path)
    assert compose_stage(cfg, "pretrain", tmp_path / "pretrain").task_name == "mine"
