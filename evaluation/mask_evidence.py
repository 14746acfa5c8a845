"""Trained vs untrained vs null maskers, per seed and across seeds.

``mask_evidence`` diagnoses one trained module's masking on evaluation images beside the same
masking at its initialisation (``untrained``) and the nulls of ``components/mask_nulls.py``
(``shuffled``, ``mean_intensity``, ``centre``, ``fixed_random``, ``random``), with reconstruction
difficulty scored by one reference MAE for every arm. ``mask_evidence_of_checkpoint`` does the
same from a pretraining checkpoint (MLO-MAE or ``MAEPretrain`` with any strategy). ``seed_intervals``
turns one such result per seed into means with Student-t intervals across seeds and the paired
differences trained minus each other masker; ``evidence_table`` prints them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.seed import isolate_rng
from scipy import stats
from torch import Tensor
from torchmetrics import Metric

from core.checkpoints import CheckpointError, read_checkpoint, run_config
from lightning_modules.components.mask_diagnostics import (
    DiagnosedMasker,
    derangement,
    diagnostic_features,
    masker_diagnostics,
)
from lightning_modules.components.mask_nulls import fixed_maps, null_diagnostics
from lightning_modules.components.masking import mask_diversity

RANDOM_MASKS = 4  # random maskings averaged for each patch's reconstruction difficulty
MASKERS = ("trained", "untrained", "shuffled", "mean_intensity", "centre", "fixed_random", "random")


def mask_evidence(masker: DiagnosedMasker, images: Tensor, maps: dict[str, Tensor],
                  untrained_state: dict[str, Tensor] | None = None, reference=None,
                  seed: int = 0) -> dict[str, dict[str, float]]:
    """{masker: {diagnostic: value}} on ``images`` (N, C, H, W) for ``trained`` (``masker`` as it
    is), ``untrained`` (``masker.learned`` with ``untrained_state`` loaded, then restored; left
    out without a state) and the nulls (``null_diagnostics`` with ``maps``).

    ``reference``: the MAE that scores reconstruction difficulty (``rho_recon*``) for every
    masker; None = the arm's own MAE (``rho_recon_own*``). The global random state is left as it was.
    """
    if len(images) < 2:
        raise ValueError(f"mask evidence needs at least 2 images, got {len(images)}")
    g = torch.Generator().manual_seed(seed)
    with isolate_rng():
        torch.manual_seed(seed)
        features = diagnostic_features(masker.mae, images, reference, RANDOM_MASKS, g)
        shuffle = derangement(len(images), g)
        draw = masker.draw(images)
        out = {"trained": _with_diversity(masker_diagnostics(masker, images, features, draw=draw, generator=g), draw)}
        if untrained_state is not None:
            if masker.learned is None:
                raise ValueError("an untrained state was given but this masker has no learned part to load it into")
            trained_state = {k: v.clone() for k, v in masker.learned.state_dict().items()}
            masker.learned.load_state_dict(untrained_state)
            try:
                untrained = masker.draw(images)
                out["untrained"] = _with_diversity(masker_diagnostics(masker, images, features, draw=untrained,
                                                                      generator=g), untrained)
            finally:
                masker.learned.load_state_dict(trained_state)
        out |= null_diagnostics(draw, features, maps, masker.mae.mask_ratio, shuffle, g)
    return out


def _with_diversity(values: dict[str, float], draw) -> dict[str, float]:
    return values | {"diversity": mask_diversity(draw.mask).item()}


def load_pretraining(ckpt: str | Path, seed: int = 0):
    """(module in eval mode with the weights of ``ckpt``, the state of its masker's learned part
    as initialised under ``seed`` before loading (None if it has none)); the module is rebuilt
    from the checkpoint's own config and must have a ``masker()`` (MLO-MAE, ``MAEPretrain``)."""
    cfg = run_config(ckpt)
    torch.manual_seed(seed)
    module = instantiate(cfg.model, _convert_="all")
    if not hasattr(module, "masker"):
        raise CheckpointError(f"{ckpt} is not a masked-autoencoder pretraining checkpoint "
                              f"({cfg.model.get('_target_')}); mask evidence needs MLO-MAE or MAEPretrain")
    learned = module.masker().learned
    untrained = None if learned is None else {k: v.clone() for k, v in learned.state_dict().items()}
    missing, unexpected = module.load_state_dict(read_checkpoint(ckpt)["state_dict"], strict=False)
    metric_states = tuple(f"{name}." for name, m in module.named_modules() if isinstance(m, Metric))
    missing = [k for k in missing if not k.startswith(metric_states)]  # best-so-far trackers of older runs
    if missing or unexpected:
        raise CheckpointError(f"{ckpt} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return module.eval(), untrained


@torch.no_grad()
def mask_evidence_of_checkpoint(ckpt: str | Path, images: Tensor, train_images: Tensor,
                                reference_ckpt: str | Path | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """``mask_evidence`` of the masking trained in ``ckpt`` on ``images`` (N, C, H, W): the
    untrained masker is the same config initialised under ``seed``; the ``mean_intensity`` map
    is averaged over ``train_images``; difficulty is scored by the MAE of ``reference_ckpt``
    (e.g. the same seed's plain MAE) or, when None, by the arm's own (``rho_recon_own*``)."""
    module, untrained = load_pretraining(ckpt, seed)
    reference = None if reference_ckpt is None else load_pretraining(reference_ckpt, seed)[0].mae
    masker = module.masker()
    maps = fixed_maps(train_images, masker.mae.encoder.patch_size, seed)
    return mask_evidence(masker, images, maps, untrained, reference, seed)


def _interval(values: np.ndarray, level: float) -> dict[str, float]:
    n = len(values)
    if n < 2:
        mean = float(values[0]) if n else float("nan")
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "p": float("nan"), "n": n}
    if np.ptp(values) == 0:  # scipy's t is undefined at zero spread: the interval is the point
        return {"mean": float(values[0]), "low": float(values[0]), "high": float(values[0]),
                "p": float("nan") if values[0] == 0 else 0.0, "n": n}
    res = stats.ttest_1samp(values, 0.0)
    ci = res.confidence_interval(level)
    return {"mean": float(values.mean()), "low": float(ci.low), "high": float(ci.high), "p": float(res.pvalue),
            "n": n}


def seed_intervals(per_seed: list[dict[str, dict[str, float]]], level: float = 0.95,
                   baseline: str = "trained") -> dict[str, dict[str, dict[str, float]]]:
    """Across seeds: {diagnostic: {name: {mean, low, high, p, n}}}, for each masker (a
    Student-t interval of its mean over seeds, scipy's ``ttest_1samp``; p tests mean 0) and for
    ``"<baseline> - <masker>"`` (the difference paired by seed: the same interval on the
    per-seed differences, i.e. scipy's ``ttest_rel``). Seeds where a value is NaN are left out
    of that entry (n says how many remain)."""
    if not per_seed:
        raise ValueError("seed_intervals needs one mask_evidence result per seed, got none")
    names = [m for m in MASKERS if m in per_seed[0]] + [m for m in per_seed[0] if m not in MASKERS]
    for i, run in enumerate(per_seed):
        if set(run) != set(names):
            raise ValueError(f"seed {i} has maskers {sorted(run)}, the first seed {sorted(names)}: every seed "
                             "must diagnose the same maskers")
    diagnostics = list(dict.fromkeys(k for run in per_seed for m in run.values() for k in m))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key in diagnostics:
        values = {m: np.array([run[m].get(key, math.nan) for run in per_seed], dtype=float) for m in names}
        row = {m: _interval(v[np.isfinite(v)], level) for m, v in values.items() if np.isfinite(v).any()}
        if baseline in values:
            for m in names:
                if m == baseline:
                    continue
                d = values[baseline] - values[m]
                if np.isfinite(d).any():
                    row[f"{baseline} - {m}"] = _interval(d[np.isfinite(d)], level)
        out[key] = row
    return out


def _cell(entry: dict[str, float] | None, seeds: int) -> str:
    """``mean [low, high]``, with ``(n = k)`` where NaN left only k of the ``seeds`` seeds."""
    if entry is None:
        return "-"
    fewer = f" (n = {entry['n']})" if entry["n"] < seeds else ""
    if entry["n"] < 2 or math.isnan(entry["low"]):
        return f"{entry['mean']:+.3f}{fewer}"
    return f"{entry['mean']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}]{fewer}"


def evidence_table(intervals: dict[str, dict[str, dict[str, float]]], level: float = 0.95,
                   label: str = "") -> list[str]:
    """Markdown rows: per diagnostic, trained / untrained / nulls (mean [t-interval] over seeds)
    and trained minus the untrained masker and minus the strongest null (the largest |mean|)."""
    lines = [f"| {'arm | ' if label else ''}diagnostic | trained | untrained | shuffled images | mean-intensity map "
             f"| centre bias | fixed random map | random masks | trained - untrained | trained - strongest null |",
             "|" + "---|" * (11 if label else 10)]
    nulls = ("shuffled", "mean_intensity", "centre", "fixed_random", "random")
    seeds = max((e["n"] for row in intervals.values() for e in row.values()), default=0)
    for key, row in intervals.items():
        diffs = {m: row[f"trained - {m}"] for m in nulls if f"trained - {m}" in row}
        strongest = max(diffs, key=lambda m: abs(row[m]["mean"]) if m in row else -1, default=None)
        cells = [_cell(row.get(m), seeds) for m in ("trained", "untrained", *nulls)]
        cells += [_cell(row.get("trained - untrained"), seeds),
                  f"{_cell(diffs[strongest], seeds)} ({strongest})" if strongest else "-"]
        lines.append(f"| {label + ' | ' if label else ''}{key} | " + " | ".join(cells) + " |")
    lines += ["", f"Mean over seeds [{level:.0%} Student-t interval over seeds]; differences paired by seed."]
    return lines
