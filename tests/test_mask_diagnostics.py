"""Mask diagnostics that an untrained or image-independent masker cannot satisfy: checked on
hand-made maskers (fixed maps, a centre bias, random masks, a masker that follows intensity),
a hand-worked tiny example, and independent references (a hand-worked hypergeometric
expectation, scipy's Spearman and t-test, least-squares residuals on position indicators)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats
from scipy.stats import spearmanr

from evaluation.mask_evidence import (
    evidence_table,
    mask_evidence,
    mask_evidence_of_checkpoint,
    seed_intervals,
)
from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.mask_diagnostics import (
    DiagnosedMasker,
    context_iou,
    correlations,
    derangement,
    expected_random_iou,
    kept_iou,
    masking_diagnostics,
    patch_edge_energy,
    patch_intensity,
    rank_correlation,
    reconstruction_difficulty,
    weight_ess,
    within_position_correlation,
)
from lightning_modules.components.mask_nulls import centre_bias, fixed_map_draw, fixed_maps
from lightning_modules.components.patches import masking_from_scores
from lightning_modules.components.strategies import MaskDraw
from lightning_modules.components.vit import ViTEncoder
from tests.helpers import tiny_module

L, RATIO = 16, 0.75  # 4 x 4 patches of an 8 x 8 image, patch 2


def _images(n=64, seed=0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _mae(seed=0, ratio=RATIO) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    enc = ViTEncoder(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=1, num_heads=2)
    return MaskedAutoencoder(enc, ratio, decoder_dim=8, decoder_depth=1, decoder_heads=2).eval()


def _radial_images(n: int, seed: int) -> torch.Tensor:
    """8 x 8 images whose brightness falls with the distance from the centre (what every image
    shares, as chest X-rays share their anatomy) plus two bright random patches of their own."""
    g = torch.Generator().manual_seed(seed)
    radial = centre_bias(4, 4).reshape(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)  # -distance, patches
    x = 2 * radial + 0.3 * torch.randn(n, 8, 8, generator=g)
    for i in range(n):
        for p in torch.randperm(L, generator=g)[:2].tolist():
            x[i, 2 * (p // 4): 2 * (p // 4) + 2, 2 * (p % 4): 2 * (p % 4) + 2] += 3.0
    return x[:, None]


def brightest_draw(images: torch.Tensor) -> MaskDraw:
    """Hides the brightest patches of each image: a masker that follows the image."""
    scores = patch_intensity(images, 2)
    return MaskDraw(masking_from_scores(scores, RATIO), scores)


def random_draw(images: torch.Tensor) -> MaskDraw:
    scores = torch.rand(len(images), L)
    return MaskDraw(masking_from_scores(scores, RATIO), scores)


def batch_dependent_draw(images: torch.Tensor) -> MaskDraw:
    """Intensity standardised over the batch plus the batch mean: depends on the neighbours."""
    scores = patch_intensity(images, 2)
    scores = scores - scores.mean(0) * torch.linspace(-3, 3, L)
    return MaskDraw(masking_from_scores(scores, RATIO), scores)


class ErrorMapMAE(torch.nn.Module):
    """An MAE whose per-patch error is a hand-made map of the image, whatever the masks:
    ``sign`` x patch intensity."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.encoder, self.mask_ratio, self.sign = _mae().encoder, RATIO, sign

    def patch_errors(self, images, masking):
        return self.sign * patch_intensity(images, 2)


# ----- the measures ------------------------------------------------------------------------
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


def test_context_iou_is_one_for_every_per_image_masker_and_below_for_a_batch_dependent_one():
    x, pool_ = _images(32), _images(64, seed=1)
    g = torch.Generator().manual_seed(0)
    state = torch.get_rng_state()
    # Random masks too: the masker's own randomness is held fixed across contexts, so only the
    # neighbours could move a mask (before, random masks scored their randomness: 0.144).
    assert context_iou(lambda b: random_draw(b).mask, x, pool_, generator=g).item() == 1.0
    assert context_iou(lambda b: brightest_draw(b).mask, x, pool_, generator=g).item() == 1.0
    assert torch.equal(torch.get_rng_state(), state)  # the global random stream is left as it was
    dependent = context_iou(lambda b: batch_dependent_draw(b).mask, x, pool_, generator=g).item()
    assert expected_random_iou(L, 4) + 0.05 < dependent < 0.99  # neighbours move it, less than at random


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


def test_within_position_correlation_equals_residuals_of_a_least_squares_fit_on_positions():
    """Independent route: rank each row (scipy), regress on position indicators (numpy lstsq),
    correlate the residuals; ties and a missing value included."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 6, size=(20, 9)).astype(float) + np.arange(9)  # ties and a position trend
    b = rng.normal(size=(20, 9)) + 0.5 * a
    b[3, 4] = np.nan
    ra = np.array([(stats.rankdata(r) - 1) / 8 for r in a])
    rb = np.full_like(b, np.nan)
    for i, r in enumerate(b):
        ok = np.isfinite(r)
        rb[i, ok] = (stats.rankdata(r[ok]) - 1) / (ok.sum() - 1)
    ok = np.isfinite(rb)
    ra_ok, rb_ok = ra[ok], rb[ok]
    positions = np.broadcast_to(np.arange(9), a.shape)[ok]
    design = np.eye(9)[positions]  # one indicator per position
    res_a = ra_ok - design @ np.linalg.lstsq(design, ra_ok, rcond=None)[0]
    res_b = rb_ok - design @ np.linalg.lstsq(design, rb_ok, rcond=None)[0]
    expected = np.corrcoef(res_a, res_b)[0, 1]
    ours = within_position_correlation(torch.from_numpy(a), torch.from_numpy(b))
    assert ours == pytest.approx(expected, abs=1e-10) and ours > 0.2
    fixed = torch.from_numpy(np.broadcast_to(a[0], a.shape).copy())
    assert within_position_correlation(fixed, torch.from_numpy(b)) == 0.0  # ignores the row: exactly 0
    assert math.isnan(within_position_correlation(torch.from_numpy(b), fixed))  # nothing varies to follow


def test_correlations_on_scores_and_drawn_masks_by_hand():
    # Two images, 4 patches, half hidden (the 2 highest scores).
    f = torch.tensor([[1.0, 2, 3, 4], [2, 1, 4, 3]])
    s = torch.tensor([[0.1, 0.4, 0.3, 0.9], [0.2, 0.1, 0.8, 0.7]])
    draw = MaskDraw(masking_from_scores(s, 0.5), s)
    assert draw.mask.tolist() == [[0, 1, 0, 1], [0, 0, 1, 1]]
    out = correlations(draw, {"f": f})
    # Spearman per image: scores 0.8 (d = 0, -1, 1, 0) and 1; masks 1/sqrt 5 and 2/sqrt 5.
    assert out["rho_f"] == pytest.approx(0.9)
    assert out["rho_f_mask"] == pytest.approx(3 / (2 * math.sqrt(5)))
    # Within positions (ranks scaled by 1/3, centred per column; x6 for scores and f, x3 for masks):
    # scores (-1, 2, -2, 1 | 1, -2, 2, -1), f (-1, 1, -1, 1 | 1, -1, 1, -1): 12 / sqrt(20 * 8);
    # masks (0, 1, -1, 0 | 0, -1, 1, 0) with f: 4 / sqrt(4 * 8).
    assert out["rho_f_within"] == pytest.approx(3 / math.sqrt(10))
    assert out["rho_f_mask_within"] == pytest.approx(1 / math.sqrt(2))


def test_patch_features_by_hand():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, :2, :2] = 4.0  # top-left patch bright and flat
    x[0, 0, 2:, 2:] = torch.tensor([[0.0, 2.0], [0.0, 2.0]])  # bottom-right patch: a vertical edge
    assert patch_intensity(x, 2).tolist() == [[4.0, 0.0, 0.0, 1.0]]
    # Inside-patch pairs only (2 x 2 patch: 2 horizontal + 2 vertical pairs): the flat patches and
    # the borders between patches give 0; the edge patch has two horizontal steps of 2: 8 / 4.
    assert patch_edge_energy(x, 2)[0].tolist() == [0.0, 0.0, 0.0, 2.0]
    tiled = x[..., 2:, 2:].repeat(1, 1, 2, 2)  # no position bias: the same pattern scores the same
    assert patch_edge_energy(tiled, 2)[0].tolist() == [2.0] * 4


def test_weight_ess_by_hand():
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    assert weight_ess(torch.tensor([[1.0, 1.0, 1.0, 1.0, 9.0]]), mask).item() == pytest.approx(1.0)
    assert weight_ess(torch.tensor([[4.0, 0.0, 0.0, 0.0, 1.0]]), mask).item() == pytest.approx(0.25)
    # weights 1, 1, 2, 0: (sum 4)^2 / (4 * (1 + 1 + 4)) = 16 / 24
    assert weight_ess(torch.tensor([[1.0, 1.0, 2.0, 0.0, 5.0]]), mask).item() == pytest.approx(2 / 3)


def test_derangement_moves_every_image():
    for n in (2, 3, 17):
        perm = derangement(n, torch.Generator().manual_seed(n))
        assert sorted(perm.tolist()) == list(range(n)) and not (perm == torch.arange(n)).any()
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1)


# ----- the nulls ---------------------------------------------------------------------------
def test_image_independent_maps_score_at_null_level_and_an_image_dependent_masker_does_not():
    """The issue's fixed-map test: on images that share a strong position structure, the
    training set's mean-intensity map and a centre bias reach a large raw correlation with
    intensity (> 0.5) while ignoring the image; every new diagnostic puts them at null level."""
    x, train = _radial_images(64, seed=0), _radial_images(200, seed=1)
    maps = fixed_maps(train, 2)
    out = mask_evidence(DiagnosedMasker(_mae(), brightest_draw), x, maps)
    for name in ("mean_intensity", "centre"):
        null = out[name]
        assert null["rho_intensity"] > 0.5 and null["rho_intensity_mask"] > 0.3  # raw: position alone
        assert null["diversity"] == 0.0  # one mask for every image
        for key in ("rho_intensity_within", "rho_intensity_mask_within", "rho_edges_within", "rho_recon_own_within"):
            assert abs(null[key]) < 0.05, (name, key)
    # The shuffled-images null of a masker that ignores the image is its own raw value.
    fixed = lambda b: fixed_map_draw(maps["mean_intensity"], len(b), RATIO)  # noqa: E731
    fixed_out = mask_evidence(DiagnosedMasker(_mae(), fixed), x, maps)
    assert fixed_out["shuffled"]["rho_intensity"] == pytest.approx(fixed_out["trained"]["rho_intensity"], abs=1e-12)
    # The masker that hides each image's brightest patches: high within positions, and above its shuffle.
    trained = out["trained"]
    assert trained["rho_intensity_within"] == pytest.approx(1.0)  # it ranks each image by intensity itself
    assert trained["rho_intensity_mask_within"] > 0.5
    assert trained["rho_intensity"] - out["shuffled"]["rho_intensity"] > 0.2
    assert abs(out["shuffled"]["rho_intensity_within"]) < 0.1  # its draws beside other images: ~0
    assert abs(out["random"]["rho_intensity_within"]) < 0.1 and abs(out["random"]["rho_intensity"]) < 0.1


def test_rho_recon_is_plus_one_for_scores_equal_to_the_reference_error_map():
    x = _images(32)
    reference = ErrorMapMAE(sign=1.0)
    # stratified random masks: from 2 draws on at 75 %, every patch has been hidden
    difficulty = reconstruction_difficulty(reference, x, random_masks=2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(difficulty, patch_intensity(x, 2).double())
    error_map = lambda b: MaskDraw(masking_from_scores(patch_intensity(b, 2), RATIO), patch_intensity(b, 2))  # noqa: E731
    out = masking_diagnostics(DiagnosedMasker(_mae(), error_map), x, reference=reference)
    assert out["rho_recon"] == pytest.approx(1.0) and out["rho_recon_within"] == pytest.approx(1.0)
    assert out["rho_recon_mask"] > 0.5 and out["rho_recon_mask_within"] > 0.5
    assert not any(k.startswith("rho_recon_own") for k in out)


def test_difficulty_is_scored_by_the_reference_mae_not_the_arms_own():
    """The arm's own MAE finds the bright patches easy, the reference finds them hard: a masker
    that hides the bright patches masks the hard ones by the reference, the easy ones by its own."""
    x = _images(32)
    own = ErrorMapMAE(sign=-1.0)
    masker = DiagnosedMasker(own, brightest_draw)
    with_reference = masking_diagnostics(masker, x, reference=ErrorMapMAE(sign=1.0))
    without = masking_diagnostics(masker, x)
    assert with_reference["rho_recon"] == pytest.approx(1.0)
    assert without["rho_recon_own"] == pytest.approx(-1.0) and "rho_recon" not in without
    evidence = mask_evidence(masker, x, fixed_maps(_images(16), 2), reference=ErrorMapMAE(sign=1.0))
    assert evidence["trained"]["rho_recon"] == pytest.approx(1.0)  # every masker: the reference's difficulty
    assert evidence["random"]["rho_recon"] == pytest.approx(0.0, abs=0.1)


def test_a_reference_on_another_patch_grid_is_refused():
    enc = ViTEncoder(img_size=8, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2)
    other = MaskedAutoencoder(enc, RATIO, decoder_dim=8, decoder_depth=1, decoder_heads=2)
    with pytest.raises(ValueError, match="same images and patch grid"):
        masking_diagnostics(DiagnosedMasker(_mae(), brightest_draw), _images(8), reference=other)


# ----- trained vs untrained vs nulls, across seeds -----------------------------------------
def test_untrained_masker_is_diagnosed_with_its_own_state_and_the_trained_state_restored():
    module = tiny_module(masking={"input_norm": "batch"})
    trained = {k: v.clone() for k, v in module.masknet.state_dict().items()}
    untrained = {k: torch.zeros_like(v) for k, v in trained.items()}  # constant 0.5 probabilities
    x = _images(32)
    out = mask_evidence(module.masker(), x, fixed_maps(_images(50, seed=3), 2), untrained)
    assert all(torch.equal(module.masknet.state_dict()[k], v) for k, v in trained.items())
    assert out["untrained"]["rho_intensity_within"] == 0.0  # constant scores carry no image
    assert out["trained"]["rho_intensity_within"] != 0.0
    assert out["untrained"]["context_iou"] == 1.0  # constant scores: the batch cannot move the mask
    assert set(out) == {"trained", "untrained", "shuffled", "mean_intensity", "centre", "fixed_random", "random"}


def test_seed_intervals_match_scipy_t():
    rng = np.random.default_rng(0)
    per_seed = [{"trained": {"rho": 0.3 + 0.05 * rng.normal(), "ess": 0.9},
                 "centre": {"rho": 0.1 + 0.05 * rng.normal()}} for _ in range(5)]
    per_seed[2]["trained"]["ess"] = float("nan")  # left out of its entry
    out = seed_intervals(per_seed, level=0.9)
    a = np.array([r["trained"]["rho"] for r in per_seed])
    b = np.array([r["centre"]["rho"] for r in per_seed])
    half = stats.t.ppf(0.95, 4) * a.std(ddof=1) / math.sqrt(5)  # by hand: mean +- t * sd / sqrt n
    assert out["rho"]["trained"]["low"] == pytest.approx(a.mean() - half)
    assert out["rho"]["trained"]["high"] == pytest.approx(a.mean() + half)
    paired = stats.ttest_rel(a, b)
    ci = paired.confidence_interval(0.9)
    diff = out["rho"]["trained - centre"]
    assert diff["mean"] == pytest.approx((a - b).mean())
    assert (diff["low"], diff["high"], diff["p"]) == pytest.approx((ci.low, ci.high, paired.pvalue))
    assert out["ess"]["trained"]["n"] == 4 and "centre" not in out["ess"]
    ess_row = next(line for line in evidence_table(out) if line.startswith("| ess |"))
    assert ess_row.split(" | ")[1].endswith("(n = 4)")  # a seed left out is said where it happens
    rho_row = next(line for line in evidence_table(out) if line.startswith("| rho |"))
    assert "(n =" not in rho_row
    with pytest.raises(ValueError, match="same maskers"):
        seed_intervals([{"trained": {"rho": 0.1}}, {"trained": {"rho": 0.2}, "centre": {"rho": 0.0}}])


def test_mask_evidence_of_a_checkpoint_uses_its_config_and_the_initial_masker(tmp_path):
    """A hand-written checkpoint of MAEPretrain + HPM: the untrained masker is the config's
    initialisation under the seed, the trained one the checkpoint's, the reference another MAE."""
    enc = {"_target_": "lightning_modules.components.vit.ViTEncoder", "img_size": 8, "patch_size": 2, "in_chans": 1,
           "embed_dim": 16, "depth": 1, "num_heads": 2}
    mae = {"_target_": "lightning_modules.components.mae.MaskedAutoencoder", "encoder": enc, "mask_ratio": RATIO,
           "decoder_dim": 8, "decoder_depth": 1, "decoder_heads": 2}
    model = {"_target_": "lightning_modules.mae.MAEPretrain", "mae": mae, "num_classes": 2, "task": "binary-class",
             "masking": "hpm"}
    from hydra.utils import instantiate

    def save(path, perturb: float):
        module = instantiate(OmegaConf.create(model), _convert_="all")
        with torch.no_grad():
            for p in module.masking.parameters():
                p.add_(perturb * torch.randn_like(p))
        torch.save({"state_dict": module.state_dict(), "medmae": {"config": {"model": model}}}, path)
        return module

    trained = save(tmp_path / "hpm.ckpt", perturb=1.0)
    save(tmp_path / "mae.ckpt", perturb=0.0)
    x, train = _images(16), _images(40, seed=4)
    out = mask_evidence_of_checkpoint(tmp_path / "hpm.ckpt", x, train, reference_ckpt=tmp_path / "mae.ckpt", seed=3)
    torch.manual_seed(3)
    initial = instantiate(OmegaConf.create(model), _convert_="all").masking.state_dict()
    trained.eval()
    expected_untrained = {k: v.clone() for k, v in initial.items()}
    direct = mask_evidence(trained.masker(), x, fixed_maps(train, 2, 3), expected_untrained, None, seed=3)
    assert "rho_recon" in out["trained"] and "rho_recon_own" in direct["trained"]
    for who in ("trained", "untrained"):
        for key in ("rho_intensity", "rho_edges_within", "rho_intensity_mask_within", "diversity"):
            assert out[who][key] == pytest.approx(direct[who][key]), (who, key)
    assert out["trained"]["rho_intensity"] != pytest.approx(out["untrained"]["rho_intensity"])


# ----- the modules -------------------------------------------------------------------------
def test_module_diagnostics_log_the_nulls_beside_each_correlation():
    module = tiny_module(masking={"input_norm": "batch"})
    x = _images(32)
    with torch.inference_mode():  # as Lightning runs validation
        out = module.mask_diagnostics(x)
    features = ("intensity", "edges", "recon_own")
    expected = {f"rho_{f}{s}" for f in features for s in ("", "_within", "_mask", "_mask_within", "_shuffled",
                                                          "_mask_shuffled")}
    assert set(out) == expected | {"ess", "context_iou", "context_iou_random"}
    assert out["context_iou_random"] == pytest.approx(expected_random_iou(L, 4))
    assert 0 < out["ess"] <= 1 and all(-1 <= out[k] <= 1 for k in expected)
    assert out["context_iou_random"] < out["context_iou"] < 1  # a batch-standardised input: neighbours matter
    per_image = tiny_module().mask_diagnostics(x)  # the mlp sees one image at a time: no context_iou
    assert "context_iou" not in per_image and "ess" in per_image


# ----- the report --------------------------------------------------------------------------
def test_report_shows_each_statistic_beside_its_null_and_the_correlations_by_feature():
    from evaluation.report import mask_section

    rho = {"": 0.21, "_shuffled": 0.20, "_within": 0.01, "_mask": 0.12, "_mask_shuffled": 0.11, "_mask_within": 0.0}
    metrics = {"val/mask_diversity": 0.98, "val/mask_context_iou": 0.86, "val/mask_context_iou_random": 0.1436,
               "val/mask_ess": 0.97, **{f"val/mask_rho_intensity{k}": v for k, v in rho.items()},
               "val/mask_rho_recon_own": -0.3, "val/auc": 0.9}
    text = "\n".join(mask_section(metrics))
    assert "| context_iou | 0.86 | 0.144 (if the batch decided every mask) |" in text
    assert "| patch intensity | +0.210 | +0.200 | +0.010 | +0.120 | +0.110 | +0.000 |" in text
    assert "| reconstruction error of this run's own MAE" in text and "| -0.300 | - | - | - | - | - |" in text
    assert "rho_intensity +0.21 is mostly position" in text and "rho_intensity_within +0.01" in text
    assert "context_iou_random |" not in text and "auc" not in text


def test_position_only_warning_only_where_other_images_reach_the_raw_value():
    from lightning_modules.components.masking import mask_warnings

    assert len(mask_warnings({"rho_edges": -0.15, "rho_edges_shuffled": -0.10, "rho_edges_within": 0.0})) == 1
    assert mask_warnings({"rho_edges": 0.30, "rho_edges_shuffled": 0.05}) == []  # follows the image
    assert mask_warnings({"rho_edges": 0.30, "rho_edges_shuffled": -0.25}) == []  # opposite sign
    assert mask_warnings({"rho_edges": 0.05, "rho_edges_shuffled": 0.05}) == []  # too small to matter


def test_fixed_maps_at_null_level_on_real_chest_x_rays():
    """The review's numbers on the first 128 PneumoniaMNIST validation images (28 px, patch 4,
    maps from the training images): raw correlations of maps that ignore the image are large,
    the within-position ones are 0."""
    from tests.helpers import REAL_PNEUMONIA

    if not REAL_PNEUMONIA.is_file():
        pytest.skip(f"{REAL_PNEUMONIA} not present")
    data = np.load(REAL_PNEUMONIA)
    train = torch.tensor(data["train_images"][:, None] / 255.0, dtype=torch.float32)
    val = torch.tensor(data["val_images"][:128, None] / 255.0, dtype=torch.float32)
    torch.manual_seed(0)
    enc = ViTEncoder(img_size=28, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2)
    mae = MaskedAutoencoder(enc, RATIO, decoder_dim=8, decoder_depth=1, decoder_heads=2).eval()

    def brightest(b):
        return MaskDraw(masking_from_scores(patch_intensity(b, 4), RATIO), patch_intensity(b, 4))

    out = mask_evidence(DiagnosedMasker(mae, brightest), val, fixed_maps(train, 4))
    assert out["mean_intensity"]["rho_intensity"] == pytest.approx(0.80, abs=0.01)
    assert out["mean_intensity"]["rho_edges"] == pytest.approx(-0.60, abs=0.01)
    assert out["centre"]["rho_intensity"] == pytest.approx(0.28, abs=0.01)
    for name in ("mean_intensity", "centre", "fixed_random"):
        assert all(out[name][f"rho_{f}_within"] == 0.0 for f in ("intensity", "edges", "recon_own"))
    assert out["trained"]["rho_intensity_within"] == pytest.approx(1.0) and out["trained"]["rho_edges_within"] < -0.3
