"""Pipelines whose stages are ordinary experiments: a stage composed alone and in its pipeline,
what of the command line reaches which stage (Hydra's precedence), the root that is no run,
the running order, init_from / links / stage.json and their errors, and every stage config
of every pipeline against the snapshot taken with the code before this design.

``python -m tests.test_stages`` rewrites the snapshot (``tests/data/stage_configs.json.gz``)
after a deliberate change of an experiment's stages."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from pipeline.cli import CONF_DIR, pipeline_argv, train
from pipeline.command_line import CARRIED, parse, root_overrides, stage_command_line
from pipeline.stage_config import compose_stage, split_by_stage
from pipeline.stages import apply_links, init_checkpoint, run_pipeline, stage_order
from tests.helpers import REPO, TINY_VIT, compose_cfg, tiny_overrides

SNAPSHOT = REPO / "tests" / "data" / "stage_configs.json.gz"
PIPELINES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if "stages:" in p.read_text())


def _stages(overrides: list[str], tmp_path) -> dict:
    cfg = compose_cfg(overrides, tmp_path)
    return {name: compose_stage(cfg, name, tmp_path / name) for name in stage_order(cfg)}


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg)


# --- a stage is an experiment ---------------------------------------------------------------

def test_a_stage_composed_alone_is_the_stage_of_its_pipeline(tmp_path):
    alone = compose_cfg(["experiment=mlo_mae_derma/pretrain", "debug=fdr"], tmp_path / "alone")
    assert "stages" not in alone and alone.model._target_.endswith("MLOMAE")
    assert (alone.data.img_size, alone.data.batch_size, alone.trainer.fast_dev_run) == (32, 4, True)
    staged = _stages(["experiment=mlo_mae_derma", "debug=fdr"], tmp_path)["pretrain"]
    mine, theirs = _plain(alone), _plain(staged)
    mine.pop("hydra")
    assert mine.pop("paths").pop("output_dir") == "${hydra:runtime.output_dir}"
    assert theirs.pop("paths").pop("output_dir") == str(tmp_path / "pretrain")
    assert mine == theirs


def test_the_root_of_a_pipeline_is_its_stage_list_not_a_run(tmp_path):
    root = compose_cfg(["experiment=mlo_mae_derma", "debug=fdr", "model.lr=0.002",
                        "stages.pretrain.trainer.max_epochs=2"], tmp_path)
    assert not {"data", "model", "encoder", "trainer", "callbacks", "logger"} & set(root)
    assert {n: dict(s) for n, s in root.stages.items()} == {
        "pretrain": {"experiment": "mlo_mae_derma/pretrain"},
        "finetune": {"experiment": "mlo_mae_derma/finetune", "init_from": {"stage": "pretrain", "ckpt": "best"}}}
    assert list(root[CARRIED]) == ["debug=fdr", "model.lr=0.002", "stages.pretrain.trainer.max_epochs=2"]
    assert root.task_name == "mlo_mae_derma"  # the run folder: logs/mlo_mae_derma/runs/<time>


# --- what of the command line reaches which stage --------------------------------------------

def test_hydra_precedence_in_every_stage_experiment_debug_command_line_then_the_stages_own(tmp_path):
    plain = _stages(["experiment=mae_derma"], tmp_path)
    assert (plain["pretrain"].data.batch_size, plain["finetune"].data.batch_size) == (128, 64)  # the stages' own
    assert plain["pretrain"].data.img_size == plain["finetune"].data.img_size == 32  # their shared base's
    dermae = compose_cfg(["experiment=dermae_derma"], tmp_path)  # the base sets 32 px, the first stages 28
    assert [compose_stage(dermae, n, tmp_path).data.img_size for n in ("diffusion", "synthesize", "pretrain")] == [
        28, 28, 32]

    debug = _stages(["experiment=mae_derma", "debug=fdr"], tmp_path)
    assert {s.data.batch_size for s in debug.values()} == {4}  # debug wins over the experiment
    assert all(s.trainer.fast_dev_run and s.data.num_workers == 0 for s in debug.values())

    cli = _stages(["experiment=mae_derma", "debug=fdr", "data.batch_size=16", "stages.finetune.data.batch_size=8"],
                  tmp_path)
    assert (cli["pretrain"].data.batch_size, cli["finetune"].data.batch_size) == (16, 8)


def test_a_group_choice_reaches_every_stage_and_one_stage_chooses_with_its_prefix(tmp_path):
    every = _stages(["experiment=mae_small", "model=resnet18", "trainer=cpu"], tmp_path)
    assert {s.model.net.name for s in every.values()} == {"resnet18"}  # the command line wins, as in Hydra
    assert all(s.trainer.accelerator == "cpu" for s in every.values())

    nested = _stages(["experiment=mae_small", "model/masking@stages.pretrain.model.masking=attmask",
                      "stages.pretrain.model.masking.variant=hints"], tmp_path)["pretrain"].model.masking
    assert (nested.name, nested.variant, nested.masking_prob) == ("attmask", "hints", 0.5)  # the group's defaults
    one = _stages(["experiment=mae_small", "stages.finetune.model=resnet18"], tmp_path)
    pre, fine = one["pretrain"], one["finetune"]
    assert fine.model.net.name == "resnet18" and "pooling" not in fine.model.net  # vit's keys do not leak
    assert pre.model._target_.endswith("MAEPretrain") and not {"net", "loss"} & set(pre.model)
    assert (pre.trainer.max_epochs, pre.monitor.metric, pre.test) == (20, "val/probe_auc", False)
    assert {"model_checkpoint", "reconstructions", "mask_maps"} <= set(pre.callbacks)
    assert pre.callbacks.early_stopping is None and "reconstructions" not in fine.callbacks
    assert "stages" not in pre and pre.paths.output_dir == str(tmp_path / "pretrain")

    bare = _stages(["experiment=mae_small", "callbacks=none"], tmp_path)  # a stage's own list is replaced too
    assert not [n for s in bare.values() for n in s.callbacks.values() if n and "_target_" in n]


def test_one_stage_overrides_set_add_and_delete_for_that_stage_only(tmp_path):
    stages = _stages(["experiment=mae_small", "stages.pretrain.model.optimizer._target_=torch.optim.SGD",
                      "~stages.pretrain.model.optimizer.betas", "+stages.pretrain.model.optimizer.momentum=0.5",
                      "++stages.finetune.trainer.max_time=00:00:10:00"], tmp_path)
    pre, fine = stages["pretrain"].model.optimizer, stages["finetune"].model.optimizer
    assert pre._target_ == "torch.optim.SGD" and pre.momentum == 0.5 and "betas" not in pre
    assert fine._target_ == "torch.optim.AdamW" and "momentum" not in fine
    assert stages["finetune"].trainer.max_time == "00:00:10:00" and "max_time" not in stages["pretrain"].trainer


def test_the_root_takes_what_it_has_keys_for_and_carries_the_rest_to_the_stages():
    line = ["experiment=mae_small", "seed=1", "debug=fdr", "trainer=cpu", "paths.medmnist_root=/m",
            "model.lr=0.1", "stages.finetune.data.root='/a b/c=d'", "~callbacks.rich_progress_bar",
            "stages.finetune.init_from.ckpt=last", "stages.pretrain.x=${oc.env:HOME}"]
    routed = root_overrides(line)
    taken = ["experiment=mae_small", "seed=1", "paths.medmnist_root=/m", "stages.finetune.init_from.ckpt=last"]
    assert routed[:-1] == taken and routed[-1].startswith(f"+{CARRIED}=[")
    carried = ["debug=fdr", "trainer=cpu", "model.lr=0.1", "stages.finetune.data.root='/a b/c=d'",
               "~callbacks.rich_progress_bar", "stages.pretrain.x=${oc.env:HOME}"]
    assert parse([routed[-1]])[0].value() == carried  # quotes, '=' and ${...} come back as written
    assert stage_command_line(routed[:-1], carried) == ["seed=1", "paths.medmnist_root=/m", *carried]
    assert root_overrides(["experiment=cnn_derma", "model.lr=0.1"]) is None  # not a pipeline: Hydra's as given
    assert root_overrides(["experiment=mae_small", "seed=2"]) == ["experiment=mae_small", "seed=2"]


def test_split_by_stage_takes_the_prefix_off_and_keeps_add_and_delete():
    common, own = split_by_stage(
        ["seed=1", "++stages.pretrain.data.batch_size=32", "+stages.pretrain.trainer.max_time=1",
         "~stages.finetune.model.optimizer.betas", "stages.finetune.model=resnet18", "stages.finetune.a.b='x y'",
         "model/masking@stages.pretrain.model.masking=attmask", "autoencoder@stages.pretrain.model.mae=vit"],
        ["pretrain", "finetune"])
    assert common == ["seed=1"]
    assert own == {"pretrain": ["++data.batch_size=32", "+trainer.max_time=1", "model/masking=attmask",
                                "autoencoder@model.mae=vit"],
                   "finetune": ["~model.optimizer.betas", "model=resnet18", "a.b='x y'"]}


def test_wrong_stage_overrides_are_refused_with_the_form_that_works(tmp_path):
    with pytest.raises(ValueError, match=r"stages.pretrian.model.lr=0.1: this pipeline has no stage 'pretrian' "
                                         r"\(its stages: pretrain, finetune\)"):
        _stages(["experiment=mae_small", "stages.pretrian.model.lr=0.1"], tmp_path)
    with pytest.raises(ValueError, match=r"sweeps a key its stage list lacks with \+\+: \+\+model.lr=0.1,0.2"):
        root_overrides(["experiment=mae_small", "model.lr=0.1,0.2"])
    assert root_overrides(["experiment=mae_small", "++model.lr=0.1,0.2", "seed=0,1"]) == [
        "experiment=mae_small", "++model.lr=0.1,0.2", "seed=0,1"]  # sweeps stay Hydra's


def test_a_command_line_value_that_fits_no_stage_names_the_stage(tmp_path):
    cfg = compose_cfg(["experiment=mae_derma", "model.loss.label_smoothing=0.1"], tmp_path)  # a classifier key
    assert compose_stage(cfg, "finetune", tmp_path).model.loss.label_smoothing == 0.1
    with pytest.raises(ValueError, match=r"stage 'pretrain' \(experiment=mae_derma/pretrain\): (.|\n)*model.loss"
                                         r"(.|\n)*stages\.pretrain\.<key>=<value>"):
        compose_stage(cfg, "pretrain", tmp_path)


def test_train_py_hands_hydra_the_routed_command_line():
    argv = ["-m", "experiment=mae_small", "seed=0,1", "model.lr=0.1", "hydra.run.dir=/x"]
    routed = pipeline_argv(argv)
    assert routed[:1] == ["-m"] and routed[1:4] == ["experiment=mae_small", "seed=0,1", "hydra.run.dir=/x"]
    assert routed[4] == f"+{CARRIED}=['model.lr=0.1']"
    assert pipeline_argv(routed) == routed  # DDP's processes re-run the routed argv: unchanged
    assert pipeline_argv(["experiment=cnn_derma", "model.lr=0.1"]) == ["experiment=cnn_derma", "model.lr=0.1"]


def test_an_experiment_outside_conf_reaches_its_stages_through_the_searchpath(tmp_path):
    conf = tmp_path / "conf" / "experiment"
    (conf / "mine").mkdir(parents=True)
    (conf / "mine.yaml").write_text((CONF_DIR / "experiment" / "mae_small.yaml").read_text()
                                    .replace("mae_small/pretrain", "mine/pretrain"))
    (conf / "mine" / "pretrain.yaml").write_text("# @package _global_\ndefaults:\n  - /experiment/mae_small/pretrain\n"
                                                 "  - _self_\ntask_name: mine\n")
    cfg = compose_cfg([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=mine", "model.lr=0.3"], tmp_path)
    pre = compose_stage(cfg, "pretrain", tmp_path / "pretrain")
    assert (pre.task_name, pre.model.lr) == ("mine", 0.3)


# --- running order, init_from, links, stage.json --------------------------------------------

def test_stages_run_after_the_stages_they_read_from_and_a_cycle_is_one_error(tmp_path):
    listing = OmegaConf.create({"stages": {  # listed before what they read from
        "export": {"experiment": "e", "kind": "export", "links": {"export.ckpt": "distill.best_checkpoint"}},
        "distill": {"experiment": "d", "links": {"model.teacher_ckpt": "finetune.best_checkpoint"}},
        "finetune": {"experiment": "f", "init_from": {"stage": "pretrain"}},
        "pretrain": {"experiment": "p"}, "other": {"experiment": "o"}}})
    assert stage_order(listing) == ["pretrain", "finetune", "distill", "export", "other"]
    listing.stages.pretrain.init_from = {"stage": "export"}
    with pytest.raises(ValueError, match=r"stages \['export', 'distill', 'finetune', 'pretrain'\] read from each "
                                         r"other in a cycle"):
        stage_order(listing)
    assert stage_order(compose_cfg(["experiment=mae_automae_small"], tmp_path)) == ["source", "pretrain", "finetune"]
    with pytest.raises(ValueError, match=r"stages.finetune reads from stage\(s\) \['pretrain'\], which this "):
        stage_order(compose_cfg(["experiment=mae_small", "stages.pretrain=null"], tmp_path))
    with pytest.raises(ValueError, match=r"stages.extra names no experiment: stages.extra.experiment="):
        stage_order(compose_cfg(["experiment=mae_small", "++stages.extra.init_from.stage=pretrain"], tmp_path))


def test_init_from_and_links_read_earlier_results_and_name_the_stage_when_they_cannot(tmp_path):
    done = {"pretrain": {"best_checkpoint": str(tmp_path / "best.ckpt"), "last_checkpoint": None}}
    init = OmegaConf.create({"stage": "pretrain", "ckpt": "best"})
    assert init_checkpoint("finetune", init, done) == str(tmp_path / "best.ckpt")
    with pytest.raises(RuntimeError, match="stage 'pretrain' saved no last_checkpoint; cannot initialise 'finetune'"):
        init_checkpoint("finetune", OmegaConf.create({"stage": "pretrain", "ckpt": "last"}), done)
    with pytest.raises(ValueError, match=r"stages.finetune.init_from.stage='source' has not run before 'finetune'"):
        init_checkpoint("finetune", OmegaConf.create({"stage": "source"}), done)
    with pytest.raises(FileNotFoundError, match="stages.finetune.init_from.ckpt=/no/such.ckpt: no such checkpoint"):
        init_checkpoint("finetune", OmegaConf.create({"stage": None, "ckpt": "/no/such.ckpt"}), done)

    scfg = OmegaConf.create({"model": {"lr": 1}})
    apply_links(scfg, "distill", OmegaConf.create({"model.teacher_ckpt": "pretrain.best_checkpoint"}), done)
    assert scfg.model.teacher_ckpt == str(tmp_path / "best.ckpt")
    with pytest.raises(RuntimeError, match="stage 'pretrain' gave no 'synthetic_train'; cannot set "
                                           "data.synthetic_train of stage 'distill'"):
        apply_links(scfg, "distill", OmegaConf.create({"data.synthetic_train": "pretrain.synthetic_train"}), done)
    with pytest.raises(ValueError, match=r"stages.distill.links.x='export.onnx': stage 'export' has not run"):
        apply_links(scfg, "distill", OmegaConf.create({"x": "export.onnx"}), done)


def _ran_with_debug_settings(run_dir) -> None:
    for stage in ("pretrain", "finetune"):
        cfg = yaml.safe_load((run_dir / stage / "config.yaml").read_text())
        assert cfg["trainer"]["fast_dev_run"] is True and cfg["trainer"]["accelerator"] == "cpu", stage
        assert cfg["data"]["batch_size"] == cfg["data"]["eval_batch_size"] == 4, stage
        assert cfg["task_name"] == "debug", stage
    assert (run_dir / "finetune" / "predictions" / "test_predictions.npz").is_file()


def test_debug_reaches_every_stage_and_a_finished_stage_is_skipped_on_a_rerun(data_root, tmp_path):
    """``python train.py experiment=mae_derma debug=fdr trainer=cpu`` with a one-block ViT, run twice."""
    overrides = ["experiment=mae_derma", "debug=fdr", "trainer=cpu", *tiny_overrides(data_root), *TINY_VIT]
    first = train(compose_cfg(overrides, tmp_path))
    _ran_with_debug_settings(tmp_path)
    fine = yaml.safe_load((tmp_path / "finetune" / "config.yaml").read_text())
    assert fine["model"]["net"]["pretrained_ckpt"] == first["pretrain/best_checkpoint"]  # init_from: pretrain's best
    markers = {s: (tmp_path / s / "stage.json").stat().st_mtime_ns for s in ("pretrain", "finetune")}
    again = run_pipeline(compose_cfg(overrides, tmp_path))  # every stage has its stage.json: nothing runs
    assert {s: (tmp_path / s / "stage.json").stat().st_mtime_ns for s in markers} == markers
    assert again["test/acc"] == first["test/acc"]
    assert again["pretrain/best_checkpoint"] == first["pretrain/best_checkpoint"]


def test_a_stage_runs_alone(data_root, tmp_path):
    """``python train.py experiment=mlo_mae_derma/pretrain debug=fdr`` (a one-block ViT)."""
    metrics = train(compose_cfg(["experiment=mlo_mae_derma/pretrain", "debug=fdr", *tiny_overrides(data_root),
                                 *TINY_VIT], tmp_path))
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert cfg["model"]["_target_"].endswith("MLOMAE") and cfg["task_name"] == "debug"
    assert cfg["data"]["mlo"]["cadence"] == [2, 1, 1] and "val/auc" in metrics
    assert not (tmp_path / "pretrain").exists()  # a run of its own, not a pipeline's stage folder


@pytest.mark.slow
def test_debug_reaches_every_stage_of_full_size_mae_derma(data_root, tmp_path):
    """The same at full size (ViT-B, patch 2, 32 px): about a minute on a 2-core CPU."""
    train(compose_cfg(["experiment=mae_derma", "debug=fdr", "trainer=cpu", *tiny_overrides(data_root)], tmp_path))
    _ran_with_debug_settings(tmp_path)


@pytest.mark.slow
def test_train_py_runs_a_pipeline_with_stage_overrides_through_hydra(data_root, tmp_path):
    """The command line through ``@hydra.main``: routed, composed per stage, in the stages' configs."""
    args = ["experiment=mae_small", "data=dermamnist", "debug=fdr", *tiny_overrides(data_root), *TINY_VIT,
            "model.lr=0.002", "stages.pretrain.model.probe_lr=0.01", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pre, fine = (yaml.safe_load((tmp_path / "run" / s / "config.yaml").read_text()) for s in ("pretrain", "finetune"))
    assert pre["model"]["lr"] == fine["model"]["lr"] == 0.002 and pre["model"]["probe_lr"] == 0.01
    assert pre["data"]["flag"] == fine["data"]["flag"] == "dermamnist"
    recorded = yaml.safe_load((tmp_path / "run" / ".hydra" / "overrides.yaml").read_text())
    assert recorded[:2] == ["experiment=mae_small", f"paths.medmnist_root={data_root}"]  # the root's
    carried = parse([recorded[2]])[0].value()  # the stages' own, as written
    assert carried[0] == "data=dermamnist" and carried[-2:] == ["model.lr=0.002", "stages.pretrain.model.probe_lr=0.01"]


# --- every stage of every pipeline, as before this design --------------------------------------

def composed_stage_configs(overrides: list[str], out: Path) -> dict[str, dict]:
    """Every stage's config (unresolved) of the pipeline ``overrides`` compose, its output folder
    written as ``<run>/<stage>``."""
    cfg = compose_cfg(overrides, out)
    configs = {}
    for name in stage_order(cfg):
        configs[name] = _plain(compose_stage(cfg, name, out / name))
        configs[name]["paths"]["output_dir"] = f"<run>/{name}"
    return configs


def comparison_pretraining(comparison: str, unit_id: str, out: Path) -> dict:
    """The pretraining config of unit ``unit_id`` of ``conf/compare/<comparison>.yaml``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.compare import comparison_spec
    from pipeline.compare_units import plan_units, pretraining_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        spec = comparison_spec(compose("compare", overrides=[f"compare={comparison}"]))
    unit = next(u for u in plan_units(spec) if u.id == unit_id)
    config = _plain(pretraining_config(spec, unit, out))
    config["paths"]["output_dir"] = "<run>"
    return config


def snapshot_entries(experiment: str | None = None) -> dict[str, dict]:
    return {k: v for k, v in json.loads(gzip.decompress(SNAPSHOT.read_bytes()))["configs"].items()
            if experiment is None or k.split("|")[0] == experiment}


def differences(before, after, path: str = "") -> list[str]:
    """The keys added (+), removed (-) or changed (~) from ``before`` to ``after``."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [line for key in sorted(set(before) | set(after)) for line in (
            [f"+ {path}{key}"] if key not in before else [f"- {path}{key}"] if key not in after
            else differences(before[key], after[key], f"{path}{key}."))]
    return [] if before == after else [f"~ {path[:-1]}: {before!r} -> {after!r}"]


# Keys of a stage's config that this design changes on purpose: none. Each stage is the same
# experiment it was, composed in the same order (train.yaml, the experiment, debug, the command
# line, the stage's own overrides). Only the pipeline's root changed: no run groups, no stage slot.
CHANGED_ON_PURPOSE: dict[str, str] = {
    "model.masking.hidden": "AutoMAE's generator width (issue 30): null = max(heads // 2, 4); the published "
                            "one-channel head of a 3-head ViT was dead at initialisation in half of the seeds",
}

DEFAULT_RUN = {"mlo_mae_derma", "compare:pilot_pneumonia"}  # the rest: pytest -m slow


COMPARISONS = [f"compare:{p.stem}" for p in sorted((CONF_DIR / "compare").glob("*.yaml"))]


@pytest.mark.parametrize("experiment", [e if e in DEFAULT_RUN else pytest.param(e, marks=pytest.mark.slow)
                                        for e in [*PIPELINES, *COMPARISONS]])
def test_every_stage_config_is_the_one_of_the_snapshot(experiment, tmp_path):
    """Plain, ``debug=fdr`` and a command line with stage overrides; a comparison's pretraining
    units (``compare:<name>``). The snapshot was written with the code before this design."""
    entries = snapshot_entries(experiment)
    assert entries, f"{experiment} is not in {SNAPSHOT.name}: python -m tests.test_stages"
    found = []
    for key, entry in entries.items():
        if experiment.startswith("compare:"):
            after = {"pretrain": comparison_pretraining(experiment[8:], key.split("|")[1], tmp_path / "run")}
        else:
            after = composed_stage_configs(entry["overrides"], tmp_path / "run")
        found += [f"{key}: {line}" for line in differences(entry["stages"], after)
                  if line[2:].split(":")[0].split(".", 1)[-1] not in CHANGED_ON_PURPOSE]
    assert not found, "stage configs that changed:\n" + "\n".join(found[:40])


def write_snapshot() -> None:
    """Compose every stage of every pipeline (plain, ``debug=fdr``, a command line) and every
    comparison's pretraining units into ``SNAPSHOT``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.compare import comparison_spec
    from pipeline.compare_units import plan_units

    out, configs = Path("/tmp/medmae-stage-snapshot"), {}
    for experiment in PIPELINES:
        first = next(iter(composed_stage_configs([f"experiment={experiment}"], out)))
        for variant, extra in (("plain", []), ("debug", ["debug=fdr"]),
                               ("cli", ["debug=fdr", "trainer=cpu", "seed=3", "data.batch_size=16", "model.lr=0.002",
                                        f"stages.{first}.trainer.max_epochs=2"])):
            overrides = [f"experiment={experiment}", *extra]
            configs[f"{experiment}|{variant}"] = {"overrides": overrides,
                                                  "stages": composed_stage_configs(overrides, out)}
    for path in sorted((CONF_DIR / "compare").glob("*.yaml")):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            spec = comparison_spec(compose("compare", overrides=[f"compare={path.stem}"]))
        seen = set()
        for unit in plan_units(spec):
            if unit.kind == "pretrain" and unit.seed == spec.seeds[0] and (unit.arm, unit.fraction) not in seen:
                seen.add((unit.arm, unit.fraction))
                configs[f"compare:{path.stem}|{unit.id}"] = {
                    "overrides": [], "stages": {"pretrain": comparison_pretraining(path.stem, unit.id, out)}}
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    data = json.dumps({"commit": commit, "configs": configs}, sort_keys=True, separators=(",", ":")).encode()
    SNAPSHOT.write_bytes(gzip.compress(data, 9, mtime=0))


if __name__ == "__main__":
    from pipeline.cli import register_resolvers

    register_resolvers()
    write_snapshot()
