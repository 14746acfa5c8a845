"""End-to-end: every experiment config through train(cfg), multirun and error paths."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.utils import instantiate

from pipeline.cli import CONF_DIR, train
from pipeline.stages import training_stages
from tests.helpers import (
    REAL_PNEUMONIA,
    REPO,
    TINY_VIT,
    assert_reported_test_metrics,
    compose_cfg,
    run_train_cli,
    tiny_overrides,
)

# MedMNIST experiments; the MHIST ones read an image table and are tested in test_own_data.py.
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if "_mhist" not in p.stem)


TINY_UNET = ["block_channels=[8,16,16]", "layers_per_block=1", "norm_groups=4"]


def _tiny_model_overrides(name: str) -> list[str]:
    """Small batches and a one-block ViT; stage-level data keys are set for pipelines too."""
    cfg = compose_cfg([f"experiment={name}"], Path("."))
    stages = cfg.get("stages") or {}
    extra = [f"++stages.{s}.data.batch_size=8" for s in stages]
    for s in training_stages(cfg) if stages else []:  # DerMAE's diffusion stage: a tiny UNet
        from pipeline.stage_config import compose_stage

        if compose_stage(cfg, s, Path(s)).model._target_.endswith("ClassConditionedDiffusion"):
            extra += [f"++stages.{s}.model.unet.{k}" for k in TINY_UNET]
    return ["data.batch_size=8", *TINY_VIT, *extra]


def _stage_configs(cfg, tmp_path) -> list:
    """The config of every stage that trains a model whose construction needs no earlier
    stage's result (a distillation stage's teacher comes from a ``links`` entry)."""
    from pipeline.stage_config import compose_stage
    from pipeline.stages import training_stages

    stages = cfg.get("stages")
    if not stages:
        return [cfg]
    independent = [n for n in training_stages(cfg)
                   if not any(str(k).startswith("model.") for k in (stages[n].get("links") or {}))]
    return [compose_stage(cfg, n, tmp_path / n) for n in independent]


FAST_FDR = {"quickstart", "cnn_derma", "vit_small", "mae_small", "mlo_mae_small"}
# full-size configs whose siblings stay in the default run (mae_derma, mlo_mae_derma): `pytest -m slow`
SLOW_BUILD = {"dermae_derma", "mlo_mae_derma_diverse",
              *(f"mae_{s}_derma" for s in ("block", "hpm", "attmask", "automae", "adversarial"))}


@pytest.mark.parametrize("experiment", [e if e in FAST_FDR else pytest.param(e, marks=pytest.mark.slow)
                                        for e in EXPERIMENTS])  # the others (full size, DerMAE): `pytest -m slow`
def test_experiment_fast_dev_run(experiment, data_root, tmp_path):
    cfg = compose_cfg(
        [f"experiment={experiment}", "debug=fdr", *tiny_overrides(data_root), *_tiny_model_overrides(experiment)],
        tmp_path,
    )
    metrics = train(cfg)
    run_dir = tmp_path / training_stages(cfg)[-1] if cfg.get("stages") else tmp_path
    assert_reported_test_metrics(run_dir, metrics)
    preds = np.load(run_dir / "predictions" / "test_predictions.npz")
    assert preds["probs"].shape[1] == yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["num_classes"]
    np.testing.assert_allclose(preds["probs"].sum(1), 1, rtol=1e-5)


@pytest.mark.parametrize("experiment", [pytest.param(e, marks=pytest.mark.slow) if e in SLOW_BUILD else e
                                        for e in EXPERIMENTS])
def test_experiment_full_config_instantiates(experiment, tmp_path):
    """The real-size configs compose and build (data is not loaded)."""
    cfg = compose_cfg([f"experiment={experiment}"], tmp_path)
    for scfg in _stage_configs(cfg, tmp_path):
        model = instantiate(scfg.model, _convert_="all")
        assert sum(p.numel() for p in model.parameters()) > 0
        assert instantiate(scfg.data).num_classes == scfg.model.num_classes


@pytest.mark.parametrize("dataset", ["pneumoniamnist", pytest.param("dermamnist", marks=pytest.mark.slow)])
def test_experiments_work_with_any_dataset(dataset, data_root, tmp_path):
    cfg = compose_cfg(["experiment=resnet18_derma", f"data={dataset}", "debug=fdr", *tiny_overrides(data_root)], tmp_path)
    metrics = train(cfg)
    assert cfg.model.net.in_chans == (1 if dataset == "pneumoniamnist" else 3)
    assert "test/auc" in metrics


def test_quickstart_learns_and_saves_consistent_predictions(data_root, tmp_path):
    cfg = compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "trainer.max_epochs=3"], tmp_path)
    metrics = train(cfg)
    assert metrics["val/auc_best"] > 0.8  # class-dependent synthetic images are learnable
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and len(ckpts) == 2
    assert Path(metrics["test_checkpoint"]).name in ckpts
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])
    # Independent recomputation from the saved predictions.
    preds = np.load(tmp_path / "predictions" / "test_predictions.npz")
    assert len(preds["labels"]) == 70
    acc = (preds["probs"].argmax(1) == preds["labels"]).mean()
    assert acc == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert metrics["objective"] == pytest.approx(metrics["val/auc_best"], abs=1e-6)


def test_class_weighted_focal_loss_and_oversampling_run(data_root, tmp_path):
    cfg = compose_cfg(
        ["experiment=quickstart", *tiny_overrides(data_root), "debug=fdr", "model.loss.name=focal",
         "model.loss.class_weighted=true", "data.sampler=sqrt", "data.label_fraction=0.5"],
        tmp_path,
    )
    assert "test/auc" in train(cfg)


@pytest.mark.slow
def test_resume_from_checkpoint(data_root, tmp_path):
    first = compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "trainer.max_epochs=1"], tmp_path / "a")
    train(first)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    second = compose_cfg(
        ["experiment=quickstart", *tiny_overrides(data_root), "trainer.max_epochs=2", f"ckpt_path={last}"],
        tmp_path / "b",
    )
    train(second)
    rows = [r.split(",") for r in (tmp_path / "b" / "csv" / "metrics.csv").read_text().splitlines()]
    epoch_col, step_col = rows[0].index("epoch"), rows[0].index("step")
    assert "0" not in {r[epoch_col] for r in rows[1:]}  # epoch 0 was not trained again
    assert min(int(r[step_col]) for r in rows[1:]) > 0  # the step counter continued


@pytest.mark.slow
def test_wandb_logger_runs_offline_without_api_key(data_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "trainer.max_epochs=1", "logger=wandb"],
                      tmp_path)  # not fast_dev_run: it replaces every logger by a dummy
    assert cfg.logger.wandb.mode == "offline"
    train(cfg)
    import wandb

    assert wandb.run is None  # finished, so the next multirun job gets its own run
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = runs[0] / "files" / "media"
    images = {p.name.rsplit("_", 2)[0] for p in (media / "images" / "eval").glob("*.png")}
    assert images == {"confusion_matrix", "per_class_accuracy", "roc_curves", "pr_curves", "confidence",
                      "reliability"}
    assert list((media / "table" / "eval").glob("test_per_class_*.table.json"))
    (predictions,) = (media / "table" / "eval").glob("test_predictions_*.table.json")
    table = json.loads(predictions.read_text())
    assert table["columns"][:2] == ["index", "label"] and len(table["data"]) == 70  # every test image


@pytest.mark.slow
def test_multirun_seeds_produce_separate_runs(data_root, tmp_path):
    proc = run_train_cli(
        ["-m", "experiment=quickstart", "seed=0,1", *tiny_overrides(data_root), "trainer.max_epochs=1"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((tmp_path / "logs" / "quickstart" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    seeds = [json.loads((j / "metrics.json").read_text()) and (j / "config.yaml").read_text() for j in jobs]
    assert "seed: 0" in seeds[0] and "seed: 1" in seeds[1]
    # The console ends each run with a short summary, not Lightning's per-class test table.
    for job in jobs:
        assert f"run folder: {job}" in proc.stdout and f"report: {job / 'report.md'}" in proc.stdout
    assert "test: acc " in proc.stdout and "Test metric" not in proc.stdout
    assert "config\n" in proc.stdout and "── data" in proc.stdout  # the composed config, as a tree


@pytest.mark.slow
def test_missing_dataset_offline_fails_fast_with_one_message(tmp_path):
    start = time.time()
    proc = run_train_cli(["experiment=cnn_derma", f"data.root={tmp_path}/empty", "data.download=false"], cwd=tmp_path)
    assert proc.returncode != 0
    assert time.time() - start < 60
    err = proc.stderr
    assert "zenodo.org/records" in err and f"{tmp_path}/empty/dermamnist.npz" in err and "MEDMNIST_ROOT" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_invalid_config_value_is_one_message_and_its_traceback_is_in_train_log(tmp_path):
    proc = run_train_cli(["experiment=quickstart", "data.label_fraction=1.5", f"data.root={tmp_path}",
                     f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert proc.returncode != 0
    assert "data.label_fraction=1.5 is invalid; allowed: (0, 1]" in proc.stderr
    assert "Traceback" not in proc.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    assert "the run failed" in log and "Traceback" in log and "data.label_fraction=1.5 is invalid" in log


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_sim_two_cpu_processes(data_root, tmp_path):
    proc = run_train_cli(
        ["experiment=quickstart", "trainer=ddp_sim", *tiny_overrides(data_root)[:3], "logger=csv",
         "~callbacks.rich_progress_bar", "trainer.max_epochs=2", "data.sampler=oversample",
         f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    preds = np.load(run / "predictions" / "test_predictions.npz")
    # The unpadded eval sampler: every test image exactly once, in dataset order.
    labels = np.load(data_root / "dermamnist.npz")["test_labels"].reshape(-1)
    np.testing.assert_array_equal(preds["labels"], labels)
    acc = (preds["probs"].argmax(1) == labels).mean()
    assert acc == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_submitit_local_launcher(data_root, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    common = ["experiment=quickstart", *tiny_overrides(data_root), "debug=fdr"]
    proc = run_train_cli(["-m", *common, "hydra/launcher=local", "hydra.launcher.cpus_per_task=1", "seed=0,1"],
                    cwd=tmp_path / "submitit")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((tmp_path / "submitit" / "logs").rglob("metrics.json"))
    assert len(jobs) == 2 and (jobs[0].parent.parent / ".submitit").is_dir()


@pytest.mark.parametrize("command", ["medmae-train", *(pytest.param(c, marks=pytest.mark.slow) for c in (
    "medmae-evaluate", "medmae-aggregate", "medmae-sweep", "medmae-synthesize", "medmae-export", "medmae-predict",
    "medmae-compare"))])
def test_entry_points_answer_help_from_any_folder(command, tmp_path):
    exe = Path(sys.executable).parent / command
    proc = subprocess.run([str(exe), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if command == "medmae-train":  # the experiments, one line each, then Hydra's groups
        experiments = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
        listed = [line.split()[0] for line in proc.stdout.split("Experiments")[1].splitlines()[1:] if line.strip()]
        assert listed[: len(experiments)] == experiments and "== Configuration groups ==" in proc.stdout
    assert not list(tmp_path.iterdir())  # --help writes nothing


def test_the_command_line_module_imports_no_torch():
    """``train.py --help`` answers without importing torch or Lightning (seconds saved per call)."""
    code = ("import sys; import pipeline.cli; sys.argv = ['train.py', '--help']; print(pipeline.cli.experiments_help()[:11]);"
            "print(sorted(m for m in ('torch', 'lightning', 'timm') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.stdout.split("\n")[:2] == ["Experiments", "[]"], proc.stdout + proc.stderr


def test_scripts_are_not_installed_as_top_level_modules(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import importlib.util as u; "
                           "print([m for m in ('train', 'evaluate', 'aggregate', 'sweep', 'synthesize', 'export', 'predict') if u.find_spec(m)])"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not REAL_PNEUMONIA.is_file(), reason="real PneumoniaMNIST not available")
@pytest.mark.parametrize("experiment", ["mlo_mae_derma", "mae_derma"])
def test_full_size_fast_dev_run_is_fast(experiment, tmp_path, capsys):
    """debug=fdr of a ViT-B pipeline: one batch of 4 per loader, every callback limited to one
    batch. Prints the wall time (the README quotes it); 2-core CPU target: under 2 minutes."""
    start = time.perf_counter()
    proc = run_train_cli([f"experiment={experiment}", "debug=fdr", "data=pneumoniamnist",
                     f"paths.medmnist_root={REAL_PNEUMONIA.parent}", f"hydra.run.dir={tmp_path / 'run'}"],
                    cwd=tmp_path, timeout=900)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert_reported_test_metrics(tmp_path / "run" / "finetune", metrics, n=4)  # one batch of 4 test images
    assert (tmp_path / "run" / "finetune" / "eval" / "test_per_class.csv").is_file()
    pre = yaml.safe_load((tmp_path / "run" / "pretrain" / "config.yaml").read_text())
    assert pre["encoder"]["embed_dim"] == 768 and pre["data"]["batch_size"] == 4  # full model, tiny batches
    with capsys.disabled():
        print(f"\n{experiment} debug=fdr: {seconds:.0f} s wall")


@pytest.mark.slow
def test_one_optimiser_convention_for_every_model(tmp_path):
    """model.lr and model.weight_decay, and the optimiser and schedule as partials, in every
    experiment (every stage); optimizer.lr is refused."""
    checked = 0
    for path in sorted((CONF_DIR / "experiment").rglob("*.yaml")):
        name = path.relative_to(CONF_DIR / "experiment").with_suffix("").as_posix()
        cfg = compose_cfg([f"experiment={name}"], tmp_path)
        if cfg.get("stages"):  # a pipeline: its stages are experiments of their own, checked here too
            continue
        models = [cfg.model] if "model" in cfg else []
        for model in models:
            assert "lr" in model and "weight_decay" in model, path.stem
            assert model.optimizer._partial_ and model.optimizer._target_.startswith("torch.optim."), path.stem
            assert "scheduler" in model, path.stem
            assert not {"lr", "weight_decay"} & set(model.optimizer), path.stem
            checked += 1
    assert checked >= 40  # every single-run experiment and every stage experiment of the pipelines
    cfg = compose_cfg(["experiment=quickstart", "+model.optimizer.lr=0.1"], tmp_path)
    with pytest.raises(Exception, match="model.optimizer.lr is not read: the rates are model.lr"):
        instantiate(cfg.model)


def test_a_local_config_is_composed_into_every_run(tmp_path, monkeypatch):
    import shutil

    import pipeline.compose

    conf = tmp_path / "conf"  # a copy: the checkout's own conf/local is never written
    shutil.copytree(CONF_DIR, conf)
    (conf / "local" / "default.yaml").unlink(missing_ok=True)
    monkeypatch.setattr(pipeline.compose, "CONF_DIR", conf)
    assert compose_cfg(["experiment=quickstart"], tmp_path / "a").paths.medmnist_root is None
    (conf / "local" / "default.yaml").write_text("# @package _global_\npaths:\n  medmnist_root: /data/medmnist\n")
    assert compose_cfg(["experiment=quickstart"], tmp_path / "b").paths.medmnist_root == "/data/medmnist"
