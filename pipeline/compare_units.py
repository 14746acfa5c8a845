"""The units of a comparison and how each one runs.

- ``pretrain`` (arm, seed[, fraction]): the arm's pretraining experiment (its pretraining stage
  for a pipeline) at the comparison's step budget; its last checkpoint is passed on (no
  selection on labels). An arm that reads labels runs once per fraction, its levels II / III on
  that fraction's labels (``data.mlo.label_fraction``).
- ``probe`` (arm, seed, fraction): logistic regression on the frozen encoder's features.
- ``finetune`` (arm, seed, fraction): the downstream experiment from the pretrained weights,
  the checkpoint with the best validation metric predicts validation and test once.

Every unit gets the comparison's data overrides, ``seed`` and ``data.split_seed`` = the seed
(the same splits and label subsets for every arm of a seed) and returns a small JSON-able dict.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from evaluation.linear_probe import downstream_outputs, fit_probe
from evaluation.predict import predict_probs
from lightning_modules.components.networks import penultimate_features
from pipeline.cli import compose_config, train
from pipeline.compare_spec import Arm, ComparisonSpec, is_unset
from pipeline.run import run_stage
from pipeline.stage_config import compose_stage

log = logging.getLogger("compare")
QUICK_IMAGES = 300  # per split, for the probes of a quick comparison
MEAN_MAP_IMAGES = 5000  # training images averaged into the diagnostics' mean-intensity map


@dataclass(frozen=True)
class Unit:
    kind: str  # pretrain | probe | finetune | diagnose
    arm: str
    seed: int
    fraction: float | None = None

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.arm}-s{self.seed}" + ("" if self.fraction is None else f"-f{self.fraction:g}")

    def pretraining(self, spec: ComparisonSpec) -> Unit | None:
        """The pretraining unit a downstream unit reads (None: scratch, or a pretraining unit)."""
        arm = spec.arms[self.arm]
        if self.kind == "pretrain" or not arm.pretrains:
            return None
        return Unit("pretrain", self.arm, self.seed, self.fraction if arm.uses_labels else None)

    def links(self, spec: ComparisonSpec) -> list[tuple[str, Unit]]:
        """A pretraining's (config key, linked arm's same-seed pretraining) pairs."""
        if self.kind != "pretrain":
            return []
        return [(key, Unit("pretrain", other, self.seed, None)) for key, other in spec.arms[self.arm].links]

    def reference(self, spec: ComparisonSpec) -> Unit | None:
        """A diagnose unit's reference pretraining (the same seed's reference arm)."""
        if self.kind != "diagnose":
            return None
        return Unit("pretrain", spec.diagnostics.reference, self.seed, None)


def plan_units(spec: ComparisonSpec) -> list[Unit]:
    """Every unit of ``spec``: the pretrainings, then the downstream units."""
    units = []
    for arm in spec.arms.values():
        if arm.pretrains:
            fractions = spec.fractions if arm.uses_labels else (None,)
            units += [Unit("pretrain", arm.name, s, f) for s in spec.seeds for f in fractions]
    if spec.diagnostics is not None:
        diagnosed = spec.diagnostics.arms or [a for a in spec.arms if a != spec.diagnostics.reference]
        units += [Unit("diagnose", u.arm, u.seed, u.fraction) for u in list(units)
                  if u.kind == "pretrain" and u.arm in diagnosed]
    return units + [Unit(mode, arm, s, f) for mode in spec.modes for f in fractions_of(spec, mode)
                    for arm in spec.arms for s in spec.seeds]


def fractions_of(spec: ComparisonSpec, mode: str) -> list[float]:
    """The label fractions ``mode`` runs at: every one for probes, the fine-tuning recipe's for fine-tuning."""
    return [f for f in spec.fractions if mode != "finetune" or f in spec.downstream.finetune]


def unit_settings(spec: ComparisonSpec, unit: Unit) -> dict:
    """Everything a unit's result depends on (its cache key) as JSON values (what a stored unit
    holds: tuples become lists); the device is not part of it."""
    arm = spec.arms[unit.arm]
    settings = {"unit": unit.id, "data": list(spec.data), "overrides": list(spec.overrides), "quick": spec.quick,
                "seed": unit.seed, "fraction": unit.fraction}
    if unit.kind == "pretrain" or arm.pretrains or arm.downstream_experiment or arm.downstream_overrides:
        settings["arm"] = arm.lean()
    if unit.kind == "pretrain" or arm.pretrains:
        settings["budget"] = asdict(spec.budget)
    if unit.kind == "diagnose":
        settings["diagnostics"] = asdict(spec.diagnostics)
    elif unit.kind != "pretrain":
        down = spec.downstream
        settings["downstream"] = {"experiment": down.experiment, "overrides": list(down.overrides)}
        if unit.kind == "probe":
            settings["downstream"]["probe_c"] = list(down.probe_c)
        else:
            settings["downstream"]["finetune"] = list(down.finetune[unit.fraction])
    return json.loads(json.dumps(settings))


def same_settings(stored: dict, settings: dict) -> bool:
    """Whether a stored unit's settings are ``settings`` (its arm compared in the lean form)."""
    if "arm" in stored:
        stored = {**stored, "arm": {k: v for k, v in stored["arm"].items() if not is_unset(k, v)}}
    return stored == settings


def common_overrides(spec: ComparisonSpec, seed: int) -> list[str]:
    return [*spec.data, f"trainer={spec.trainer}", *spec.overrides, f"seed={seed}", f"data.split_seed={seed}",
            "logger=csv", "print_config=false", "~callbacks.rich_progress_bar", "++trainer.enable_progress_bar=false",
            "++trainer.enable_model_summary=false"]


class CountBatches(L.Callback):
    """Counts the training batches that ran (an MLO-MAE batch is one cycle)."""

    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.count += 1


def pretraining_config(spec: ComparisonSpec, unit: Unit, run_dir: Path) -> DictConfig:
    """The arm's pretraining config for ``unit`` (its stage, for a pipeline experiment)."""
    arm = spec.arms[unit.arm]
    cfg = compose_config([f"experiment={arm.experiment}", *common_overrides(spec, unit.seed), *arm.overrides], run_dir)
    if cfg.get("stages"):
        if arm.stage not in cfg.stages:
            raise ValueError(f"compare.arms.{arm.name}.stage={arm.stage!r}: experiment {arm.experiment!r} has the "
                             f"stages {list(cfg.stages)}")
        cfg = compose_stage(cfg, arm.stage, run_dir)
    if arm.uses_labels:
        if not cfg.data.get("mlo"):
            raise ValueError(f"compare.arms.{arm.name}.uses_labels=true, but its pretraining reads no labels "
                             "(no data.mlo): set uses_labels=false")
        cfg.data.mlo.label_fraction = unit.fraction
    return cfg


def budget_of(spec: ComparisonSpec, arm: Arm, batches_per_epoch: int, per_batch: int) -> tuple[int, int | None]:
    """(epochs, training batches per epoch or None for all) of ``arm``'s pretraining."""
    if spec.quick:
        return 1, min(2, batches_per_epoch)
    if arm.epochs is not None:
        return arm.epochs, None
    batches, rest = divmod(spec.budget.level1_steps, spec.budget.epochs * per_batch)
    if rest or not 1 <= batches <= batches_per_epoch:
        raise ValueError(
            f"compare.budget: {spec.budget.level1_steps} level-I steps in {spec.budget.epochs} epochs is "
            f"{spec.budget.level1_steps / (spec.budget.epochs * per_batch):g} batches of {per_batch} level-I step(s) "
            f"per epoch for arm {arm.name!r}, which has {batches_per_epoch} per epoch; choose a whole number of at "
            f"most {batches_per_epoch}")
    return spec.budget.epochs, None if batches == batches_per_epoch else batches


def identity_of(dm) -> dict | None:
    """The datamodule's source identity (``core.data_identity``), or None."""
    return dm.source_identity() if hasattr(dm, "source_identity") else None


def train_batches_per_epoch(cfg: DictConfig) -> tuple[int, dict | None]:
    """(training batches of one epoch of ``cfg``'s datamodule (MLO-MAE: cycles of its level
    loaders), its data identity)."""
    from lightning.pytorch.utilities import CombinedLoader

    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    if isinstance(loader, CombinedLoader):
        iter(loader)  # its length is known once its iterator (the mode's cycling) exists
    return len(loader), identity_of(dm)


def run_pretrain(spec: ComparisonSpec, unit: Unit, run_dir: Path, links: dict[str, str] | None = None) -> dict:
    cfg = pretraining_config(spec, unit, run_dir)
    for key, ckpt in (links or {}).items():
        OmegaConf.update(cfg, key, ckpt, force_add=True)
    arm = spec.arms[unit.arm]
    per_batch = int(cfg.data.mlo.cadence[0]) if cfg.data.get("mlo") else 1
    batches_per_epoch, identity = train_batches_per_epoch(cfg)
    epochs, batches = budget_of(spec, arm, batches_per_epoch, per_batch)
    cfg.trainer.max_epochs = epochs
    if batches is not None:
        cfg.trainer.limit_train_batches = batches
    last = run_dir / "checkpoints" / "last.ckpt"
    resumed = last.is_file()
    if resumed:  # an interrupted unit resumes: it counts only the batches left
        cfg.ckpt_path = str(last)
    counter = CountBatches()
    metrics = run_stage(cfg, [counter])
    expected = epochs * (batches or batches_per_epoch)
    if counter.count != expected and not resumed:
        raise RuntimeError(f"unit {unit.id} ran {counter.count} training batches, the budget says {expected}")
    return {"ckpt": metrics["last_checkpoint"], "wall_s": metrics["wall_time_s"], "epochs": epochs,
            "batches_per_epoch": batches or batches_per_epoch, "level1_steps": expected * per_batch,
            "val_loss": metrics.get("val/loss"), "data_identity": identity}


def downstream_config(spec: ComparisonSpec, unit: Unit, run_dir: Path, extra: list[str]) -> DictConfig:
    """The downstream experiment of ``unit``'s arm (its own, else the comparison's) at its fraction."""
    down, arm = spec.downstream, spec.arms[unit.arm]
    return compose_config([f"experiment={arm.downstream_experiment or down.experiment}",
                           *common_overrides(spec, unit.seed), *down.overrides, *arm.downstream_overrides,
                           f"data.label_fraction={unit.fraction}", *extra], run_dir)


def _batches(dataset, limit: int | None, batch_size: int):
    """(images, labels) batches of the first ``limit`` items (all when None), in order."""
    from torch.utils.data import DataLoader

    for x, y, *_ in DataLoader(_first(dataset, limit), batch_size=batch_size, shuffle=False):
        yield x, y


def _first(dataset, limit: int | None):
    """The first ``limit`` items of ``dataset`` (all when None): a quick comparison's probes and
    fine-tunings test on the same images."""
    from torch.utils.data import Subset

    return dataset if limit is None else Subset(dataset, range(min(limit, len(dataset))))


def _split_arrays(dataset, limit: int | None) -> tuple[torch.Tensor, np.ndarray]:
    """The first ``limit`` items as one tensor (N, C, H, W) and their labels (N,)."""
    xs, ys = zip(*_batches(dataset, limit, 256))
    return torch.cat(xs), torch.cat(ys).numpy().reshape(-1)


@torch.no_grad()
def run_probe(spec: ComparisonSpec, unit: Unit, ckpt: str | None, run_dir: Path) -> dict:
    start = time.time()
    cfg = downstream_config(spec, unit, run_dir, ["data.augment=null"])  # features of unaugmented images
    if ckpt:
        cfg.model.net.pretrained_ckpt = ckpt
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup()
    torch.manual_seed(unit.seed)  # the scratch arm's random encoder
    net = instantiate(cfg.model, _convert_="all").net.eval()
    encode = penultimate_features(net)
    limit = QUICK_IMAGES if spec.quick else None
    features, labels = {}, {}
    for split in ("train", "val", "test"):  # streamed: own data may not fit in memory as one tensor
        pairs = [(encode(x).numpy(), y.numpy().reshape(-1))
                 for x, y in _batches(getattr(dm, f"{split}_set"), limit, spec.downstream.batch_size)]
        features[split] = np.concatenate([f for f, _ in pairs])
        labels[split] = np.concatenate([y for _, y in pairs])
    c, probs = fit_probe(features, labels, spec.downstream.probe_c, int(cfg.data.num_classes))
    out = downstream_outputs(probs["val"], labels["val"], probs["test"], labels["test"])
    return {**out, "C": c, "n_labels": int(len(labels["train"])), "wall_s": time.time() - start,
            "test_labels": labels["test"].tolist(), "data_identity": identity_of(dm)}


def run_finetune(spec: ComparisonSpec, unit: Unit, ckpt: str | None, run_dir: Path) -> dict:
    epochs, every = (1, 1) if spec.quick else spec.downstream.finetune[unit.fraction]
    extra = [f"trainer.max_epochs={epochs}", f"trainer.check_val_every_n_epoch={every}", "test=false",
             "~callbacks.evaluation"]
    if spec.quick:
        extra += ["++trainer.limit_train_batches=2", "++trainer.limit_val_batches=2"]
    cfg = downstream_config(spec, unit, run_dir, extra)
    if ckpt:
        cfg.model.net.pretrained_ckpt = ckpt
    metrics = train(cfg)
    model = instantiate(cfg.model, _convert_="all")
    state = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup()
    val, test = (predict_probs(model, _first(getattr(dm, f"{split}_set"), QUICK_IMAGES if spec.quick else None),
                               spec.downstream.batch_size) for split in ("val", "test"))
    out = downstream_outputs(*val, *test)
    return {**out, "wall_s": metrics["wall_time_s"], "epochs": epochs, "test_labels": test[1].tolist(),
            "data_identity": identity_of(dm)}


@torch.no_grad()
def run_diagnose(spec: ComparisonSpec, unit: Unit, ckpt: str, reference: str, run_dir: Path) -> dict:
    """Mask evidence of the arm's trained masking (``evaluation.mask_evidence``) on the first
    validation images of its pretraining data, unaugmented."""
    from evaluation.mask_evidence import mask_evidence_of_checkpoint

    start = time.time()
    cfg = pretraining_config(spec, Unit("pretrain", unit.arm, unit.seed, unit.fraction), run_dir)
    cfg.data.augment = None
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    images, _ = _split_arrays(dm.val_set, spec.diagnostics.images)
    train, _ = _split_arrays(dm.train_set, QUICK_IMAGES if spec.quick else MEAN_MAP_IMAGES)
    evidence = mask_evidence_of_checkpoint(ckpt, images, train, reference, seed=unit.seed)
    return {"evidence": evidence, "images": len(images), "wall_s": time.time() - start}


def run_unit(spec: ComparisonSpec, unit: Unit, run_dir: Path, ckpt: str | None = None,
             reference: str | None = None, links: dict[str, str] | None = None) -> dict:
    """Run ``unit`` in ``run_dir`` (``ckpt``: the pretrained checkpoint of a downstream or
    diagnose unit; ``reference``: a diagnose unit's reference checkpoint; ``links``: a
    pretraining's linked checkpoints by config key)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if unit.kind == "pretrain":
        return run_pretrain(spec, unit, run_dir, links)
    if unit.kind == "diagnose":
        return run_diagnose(spec, unit, ckpt, reference, run_dir)
    if unit.kind == "probe":
        return run_probe(spec, unit, ckpt, run_dir)
    return run_finetune(spec, unit, ckpt, run_dir)

