"""Mask diagnostics that separate learned masks from noise, checked on hand-made masks (random
masks, one fixed mask, a mask that follows intensity) and against independent references
(a hand-worked hypergeometric expectation, scipy's Spearman, a copied model stepped by
torch.optim.SGD)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.mask_diagnostics import (
    context_iou,
    expected_random_iou,
    kept_iou,
    level3_after_step,
    patch_edge_energy,
    patch_intensity,
    rank_correlation,
    weight_ess,
)
from lightning_modules.components.patches import masking_from_scores
from lightning_modules.components.vit import ClassificationHead, ViTEncoder, pool
from tests.test_mlo_mae import tiny_module

L, RATIO = 16, 0.75  # 4 x 4 patches of an 8 x 8 image, patch 2


def _images(n=64, seed=0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def random_mask_fn(batch: torch.Tensor) -> torch.Tensor:
    return masking_from_scores(torch.rand(len(batch), L), RATIO)[1]


def fixed_mask_fn(batch: torch.Tensor) -> torch.Tensor:
    return masking_from_scores(torch.arange(L, dtype=torch.float).expand(len(batch), L), RATIO)[1]


def intensity_mask_fn(batch: torch.Tensor) -> torch.Tensor:
    """Masks the brightest patches (keeps the darkest): a mask that follows intensity."""
    return masking_from_scores(patch_intensity(batch, 2), RATIO)[1]


def batch_dependent_mask_fn(batch: torch.Tensor) -> torch.Tensor:
    """Intensity standardised over the batch plus the batch mean: depends on the neighbours."""
    scores = patch_intensity(batch, 2)
    return masking_from_scores(scores - scores.mean(0) * torch.linspace(-3, 3, L), RATIO)[1]


def test_expected_random_iou_against_a_hand_computation_and_simulation():
    # L=4, k=2: overlap 2 w.p. 1/6 (IoU 1), 1 w.p. 4/6 (IoU 1/3), 0 w.p. 1/6 (IoU 0) -> 7/18
    assert expected_random_iou(4, 2) == pytest.approx(7 / 18)
    a, b = (masking_from_scores(torch.rand(20000, L), RATIO)[1] for _ in range(2))
    assert kept_iou(a, b).mean().item() == pytest.approx(expected_random_iou(L, 4), abs=0.005)
    with pytest.raises(ValueError, match="num_kept"):
        expected_random_iou(4, 0)


def test_kept_iou_by_hand():
    a = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])  # kept {0, 1} and {0}
    b = torch.tensor([[0, 1, 0, 1], [0, 1, 1, 1]])  # kept {0, 2} and {0}
    assert kept_iou(a, b).tolist() == [pytest.approx(1 / 3), 1.0]


def test_context_iou_separates_stable_masks_from_random_ones():
    x, pool_ = _images(32), _images(64, seed=1)
    g = torch.Generator().manual_seed(0)
    rnd = context_iou(random_mask_fn, x, pool_, generator=g).item()
    assert rnd == pytest.approx(expected_random_iou(L, 4), abs=0.04)
    assert context_iou(fixed_mask_fn, x, pool_, generator=g).item() == 1.0
    assert context_iou(intensity_mask_fn, x, pool_, generator=g).item() == 1.0  # per image: no neighbours
    dependent = context_iou(batch_dependent_mask_fn, x, pool_, generator=g).item()
    assert rnd + 0.05 < dependent < 0.99  # neighbours move it, but less than random masks


def test_rank_correlation_matches_scipy_with_ties_and_missing_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(6, 16)).astype(float)  # many ties
    b = rng.normal(size=(6, 16))
    b[0, :4] = np.nan  # not measured
    ours = rank_correlation(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    for i in range(6):
        ok = np.isfinite(b[i])
        assert ours[i] == pytest.approx(spearmanr(a[i, ok], b[i, ok]).statistic, abs=1e-12)
    assert np.isnan(rank_correlation(torch.ones(1, 16), torch.randn(1, 16)).item())  # constant row


def test_content_dependence_of_a_mask_that_follows_intensity_and_of_random_probabilities():
    x = _images(200)
    intensity = patch_intensity(x, 2)
    assert rank_correlation(intensity, patch_intensity(x, 2)).mean().item() == pytest.approx(1.0)
    random_probs = torch.rand(200, L, generator=torch.Generator().manual_seed(3))
    assert abs(rank_correlation(random_probs, intensity).mean().item()) < 0.05


def test_patch_features_by_hand():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, :2, :2] = 4.0  # top-left patch bright and flat
    x[0, 0, 2:, 2:] = torch.tensor([[0.0, 2.0], [0.0, 2.0]])  # bottom-right patch: a vertical edge
    assert patch_intensity(x, 2).tolist() == [[4.0, 0.0, 0.0, 1.0]]
    # Inside-patch pairs only (2 x 2 patch: 2 horizontal + 2 vertical pairs): the flat patches and
    # the borders between patches give 0; the edge patch has two horizontal steps of 2: 8 / 4.
    assert patch_edge_energy(x, 2)[0].tolist() == [0.0, 0.0, 0.0, 2.0]
    # No position bias: the same edge pattern in every patch scores the same everywhere.
    tiled = x[..., 2:, 2:].repeat(1, 1, 2, 2)
    assert patch_edge_energy(tiled, 2)[0].tolist() == [2.0] * 4


def test_weight_ess_by_hand():
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    assert weight_ess(torch.tensor([[1.0, 1.0, 1.0, 1.0, 9.0]]), mask).item() == pytest.approx(1.0)
    assert weight_ess(torch.tensor([[4.0, 0.0, 0.0, 0.0, 1.0]]), mask).item() == pytest.approx(0.25)
    # weights 1, 1, 2, 0: (sum 4)^2 / (4 * (1 + 1 + 4)) = 16 / 24
    assert weight_ess(torch.tensor([[1.0, 1.0, 2.0, 0.0, 5.0]]), mask).item() == pytest.approx(2 / 3)


def test_level3_after_step_equals_a_copied_model_stepped_by_sgd_and_restores_weights():
    torch.manual_seed(0)
    enc = ViTEncoder(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=1, num_heads=2)
    mae = MaskedAutoencoder(enc, RATIO, decoder_dim=8, decoder_depth=1, decoder_heads=2)
    head = ClassificationHead(16, 3, 0.0)
    x1, x3 = _images(8), _images(8, seed=5)
    y3 = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(2))
    masking = masking_from_scores(torch.rand(8, L), RATIO)
    weights = torch.rand(8, L)
    before = copy.deepcopy(mae.state_dict())
    ours = level3_after_step(mae, head, x1, masking, weights, x3, y3, step=0.1)
    reference = copy.deepcopy(mae)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    reference(x1, masking, patch_weights=weights).loss.backward()
    opt.step()
    expected = F.cross_entropy(head(pool(reference.encoder(x3), "cls")), y3)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(torch.equal(before[k], v) for k, v in mae.state_dict().items())


def test_module_diagnostics_have_their_random_baselines_beside_them():
    module = tiny_module(masking={"input_norm": "batch"})
    x = _images(32)
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(1))
    out = module.mask_diagnostics(x, y)
    assert set(out) == {"context_iou", "context_iou_random", "rho_intensity", "rho_edges", "rho_recon", "ess"}
    assert out["context_iou_random"] == pytest.approx(expected_random_iou(L, 4))
    assert 0 < out["ess"] <= 1 and all(-1 <= out[k] <= 1 for k in ("rho_intensity", "rho_edges", "rho_recon"))
    assert out["context_iou"] > out["context_iou_random"]  # an mlp's masks of an image barely move with the batch
    with torch.inference_mode():  # as Lightning runs validation
        with_gain = module.mask_diagnostics(x, y, step=0.5)
    assert np.isfinite(with_gain["level3_gain"]) and abs(with_gain["level3_gain"]) > 1e-6
    assert {k: v for k, v in with_gain.items() if k != "level3_gain"} == out  # the virtual steps left no trace
    # By hand: level-III loss after a step with random masks (the same 4 draws) minus with learned masks.
    half, g = 16, torch.Generator().manual_seed(0)
    masking = module.masks(x)[0]
    for _ in range(module.RANDOM_MASKS):  # the draws mask_diagnostics made before its own random masks
        masking_from_scores(torch.rand(32, L, generator=g), RATIO)
    context_iou(lambda b: module.masks(b)[0][1], x[:half], x, generator=g)
    randoms = [masking_from_scores(torch.rand(half, L, generator=g), RATIO) for _ in range(module.RANDOM_MASKS)]
    loss = [level3_after_step(module.mae, module.head, x[:half], m, None, x[half:], y[half:], 0.5).item()
            for m in (tuple(t[:half] for t in masking), *randoms)]
    assert with_gain["level3_gain"] == pytest.approx(np.mean(loss[1:]) - loss[0], rel=1e-5)


def test_report_shows_each_diagnostic_beside_its_random_mask_value():
    from evaluation.report import mask_section

    metrics = {"val/mask_diversity": 0.98, "val/mask_context_iou": 0.86, "val/mask_context_iou_random": 0.1436,
               "val/mask_rho_intensity": 0.42, "val/mask_ess": 0.97, "val/mask_level3_gain": 2.1e-5,
               "val/mask_level1_scale": 1.0, "val/mask_saturated": 0.0, "val/auc": 0.9}
    text = "\n".join(mask_section(metrics))
    assert "| context_iou | 0.86 | 0.144 |" in text and "| rho_intensity | 0.42 | 0 |" in text
    assert "| level3_gain | 2.1e-05 | 0 |" in text and "context_iou_random" not in text
    assert "auc" not in text
