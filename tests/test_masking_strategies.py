"""The masking strategies of MAEPretrain (model.masking): exact ratio, block shapes, HPM's ranking
loss, AttMask's top-attended patches, AutoMAE's adversarial gradient, bit-exact resume."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.patches import num_kept
from lightning_modules.components.strategies import STRATEGIES, build_strategy
from lightning_modules.components.strategies.attmask import AttentionMasking, last_block_attention
from lightning_modules.components.strategies.automae import (
    AdversarialMasking,
    adversarial_objective,
    relaxed_top_k,
)
from lightning_modules.components.strategies.base import mixed_top_k
from lightning_modules.components.strategies.block import block_mask
from lightning_modules.components.strategies.hpm import relative_ranking_loss
from lightning_modules.components.vit import ViTEncoder
from pipeline.cli import train
from tests.conftest import compose_cfg, tiny_overrides
from tests.test_train import TINY_VIT


def _mae(img=28, patch=4, ratio=0.75, seed=0) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    enc = ViTEncoder(img_size=img, patch_size=patch, in_chans=1, embed_dim=32, depth=2, num_heads=2)
    return MaskedAutoencoder(enc, ratio, decoder_dim=16, decoder_depth=1, decoder_heads=2)


def _images(n: int, img: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, img, img, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("ratio", [0.75, 0.6])
def test_every_strategy_hides_exactly_the_ratio_and_its_masking_is_consistent(name, ratio):
    mae = _mae(ratio=ratio)  # 7 x 7 = 49 patches: 0.75 -> 37 hidden, 0.6 -> 29
    strategy = build_strategy(name, mae)
    x = _images(6)
    for progress in (0.01, 0.5, 1.0):
        draw = strategy.draw(x, mae, progress)
        ids_keep, mask, ids_restore = draw.masking
        hidden = 49 - num_kept(49, ratio)
        assert mask.shape == (6, 49) and (mask.sum(1) == hidden).all()
        assert ids_keep.shape == (6, 49 - hidden)
        assert (torch.gather(mask, 1, ids_keep) == 0).all()  # the kept ids are the visible patches
        assert torch.equal(torch.sort(torch.cat([ids_keep, torch.nonzero(mask)[:, 1].view(6, -1)], 1), 1).values,
                           torch.arange(49).expand(6, -1))
        assert torch.equal(torch.argsort(ids_restore, 1)[:, : 49 - hidden], ids_keep)
        assert draw.scores.shape == (6, 49) and draw.scores.min() >= 0 and draw.scores.max() <= 1
    assert mae(x, draw.masking).loss.isfinite()


def test_mlo_and_unknown_names_and_options_are_refused_with_the_fix():
    mae = _mae()
    with pytest.raises(ValueError, match="model=mlo_mae"):
        build_strategy("mlo", mae)
    with pytest.raises(ValueError, match="allowed"):
        build_strategy("checkerboard", mae)
    with pytest.raises(ValueError, match=r"\['hard_share'\] do not apply to model.masking='block'"):
        build_strategy("block", mae, hard_share=0.5)
    with pytest.raises(ValueError, match="random_share"):
        build_strategy("attmask", mae, random_share=1.5)


# ----- block --------------------------------------------------------------------------------
def _components(mask: np.ndarray) -> int:
    from scipy.ndimage import label

    return label(mask)[1]  # 4-connected components


def test_block_masks_are_unions_of_the_placed_rectangles_with_the_exact_count():
    rng = np.random.default_rng(0)
    for grid, hidden in ((7, 37), (14, 147), (16, 192), (14, 75)):
        for _ in range(20):
            mask, rects = block_mask(grid, hidden, max(1, round(16 * grid * grid / 196)), 0.3, rng)
            assert mask.sum() == hidden
            union = np.zeros_like(mask)
            for top, left, h, w in rects:
                assert 0 <= top and top + h <= grid and 0 <= left and left + w <= grid and h >= 1 and w >= 1
                union[top:top + h, left:left + w] = True
            assert np.array_equal(union, mask)
            assert len(rects) < hidden / 2  # blocks, not single patches


def test_block_masks_are_far_more_contiguous_than_random_masks_at_the_same_ratio():
    rng = np.random.default_rng(1)
    grid, hidden = 14, 75  # BEiT's setting: 75 of 196 patches
    blocks = [_components(block_mask(grid, hidden, 16, 0.3, rng)[0]) for _ in range(50)]
    # the strategy hides the blocks themselves (not, say, their complement): few hidden components
    mae = _mae(img=56, patch=4, ratio=75 / 196 - 1e-9)
    draw = build_strategy("block", mae).draw(_images(20, img=56), mae)
    assert (draw.mask.sum(1) == 75).all()
    drawn = [_components(m.reshape(14, 14).bool().numpy()) for m in draw.mask]
    assert np.mean(drawn) < 4 and torch.equal(draw.scores, draw.mask)
    randoms = []
    for _ in range(50):
        m = np.zeros(grid * grid, dtype=bool)
        m[rng.choice(grid * grid, hidden, replace=False)] = True
        randoms.append(_components(m.reshape(grid, grid)))
    assert np.mean(blocks) < 4 and np.mean(randoms) > 15


# ----- shared top-k -------------------------------------------------------------------------
def test_mixed_top_k_hides_the_top_scores_then_random_ones():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.0, 0.6]])  # 8 patches, ratio 0.5 -> 4 hidden
    for _ in range(10):
        assert mixed_top_k(scores, 0.5, 1.0)[1].tolist() == [[0, 1, 0, 1, 0, 1, 0, 1]]
        half = mixed_top_k(scores, 0.5, 0.5)[1][0]  # the top 2 (0.9, 0.8) always, 2 more at random
        assert half[1] == 1 and half[3] == 1 and half.sum() == 4
    torch.manual_seed(0)
    seen = torch.stack([mixed_top_k(scores, 0.5, 0.5)[1][0] for _ in range(300)]).mean(0)
    assert seen[[0, 2, 4, 5, 6, 7]].min() > 0.2  # every other patch is drawn sometimes


# ----- HPM ----------------------------------------------------------------------------------
def test_hpm_ranking_loss_matches_a_hand_computation_and_ignores_ties():
    pred = torch.tensor([[0.0, 1.0, 3.0]])
    target = torch.tensor([[0.2, 0.1, 0.5]])
    # pairs by target: (0 harder than 1): -log sig(p0 - p1) = -log sig(-1); (2 > 0): -log sig(3); (2 > 1): -log sig(2)
    expected = (-math.log(1 / (1 + math.exp(1))) - math.log(1 / (1 + math.exp(-3))) - math.log(1 / (1 + math.exp(-2)))) / 3
    assert relative_ranking_loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
    tied = torch.tensor([[0.2, 0.2, 0.5]])  # the tied pair (0, 1) drops out: two pairs left
    expected_tied = (-math.log(1 / (1 + math.exp(-3))) - math.log(1 / (1 + math.exp(-2)))) / 2
    assert relative_ranking_loss(pred, tied).item() == pytest.approx(expected_tied, rel=1e-6)
    # The same loss as HPM's form over ordered pairs: BCE of sigmoid(p_b - p_a) with label t_b > t_a.
    p, t = torch.randn(4, 9, generator=torch.Generator().manual_seed(3)), torch.rand(4, 9)
    d, pos, neg = p.unsqueeze(1) - p.unsqueeze(2), t.unsqueeze(1) > t.unsqueeze(2), t.unsqueeze(1) < t.unsqueeze(2)
    ordered = -(pos * F.logsigmoid(d) + neg * F.logsigmoid(-d)).sum() / (pos | neg).sum()
    assert relative_ranking_loss(p, t).item() == pytest.approx(ordered.item(), rel=1e-6)


def test_hpm_hides_the_teachers_predicted_hardest_patches_on_its_schedule():
    mae = _mae()
    hpm = build_strategy("hpm", mae, hard_share=1.0)
    x = _images(4)
    losses = hpm.predicted_losses(x)
    hidden = 49 - num_kept(49, 0.75)
    top = losses.topk(hidden, 1).indices
    draw = hpm.draw(x, mae, progress=1.0)
    assert (torch.gather(draw.mask, 1, top) == 1).all()
    early = hpm.draw(x, mae, progress=0.01)  # share 0.01 -> int(37 * 0.01) = 0 informed: random masks
    overlap = torch.gather(early.mask, 1, top).mean().item()
    assert overlap < 0.95
    # the loss predictor learns from the ranking loss (and its gradient reaches the encoder, as in HPM)
    out = mae(x, draw.masking)
    loss, logs = hpm.auxiliary_loss(x, mae, draw, out)
    loss.backward()
    assert hpm.predictor.pred.weight.grad.abs().sum() > 0 and mae.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert all(p.grad is None for p in hpm.teacher_encoder.parameters())
    assert logs["train/hpm_rank_loss"] > 0


def test_hpm_ranks_the_predictors_output_of_the_hidden_patches_against_their_errors(monkeypatch):
    mae = _mae()
    hpm = build_strategy("hpm", mae, loss_weight=2.0)
    x = _images(3)
    draw = hpm.draw(x, mae, progress=0.5)
    out = mae(x, draw.masking)
    known = torch.randn(3, 49, 1, generator=torch.Generator().manual_seed(4))
    seen = {}

    def fake_predictor(latent, ids_restore):
        seen["ids_restore"] = ids_restore
        return known

    monkeypatch.setattr(hpm.predictor, "forward", fake_predictor)
    loss, logs = hpm.auxiliary_loss(x, mae, draw, out)
    assert torch.equal(seen["ids_restore"], draw.masking[2])  # the predictor sees this draw's layout
    hidden = draw.mask.bool()
    expected = relative_ranking_loss(known.squeeze(-1)[hidden].view(3, 37), out.errors.detach()[hidden].view(3, 37))
    assert loss.item() == pytest.approx(2.0 * expected.item(), rel=1e-6)
    assert logs["train/hpm_rank_loss"].item() == pytest.approx(expected.item(), rel=1e-6)


# ----- AttMask ------------------------------------------------------------------------------
def test_last_block_attention_equals_timms_attention_probabilities():
    mae = _mae()
    enc = mae.encoder
    captured = {}
    last = enc.blocks[-1].attn
    last.fused_attn = False  # timm then materialises the probabilities and passes them to attn_drop
    handle = last.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("attn", o.detach()))
    x = _images(3)
    with torch.no_grad():
        enc(x)
    handle.remove()
    reference = captured["attn"]  # (B, heads, 1 + L, 1 + L)
    assert torch.allclose(last_block_attention(enc, x, "cls"), reference[:, :, 0, 1:].mean(1), atol=1e-6)
    assert torch.allclose(last_block_attention(enc, x, "mean"), reference[:, :, 1:, 1:].mean((1, 2)), atol=1e-6)


def test_attmask_hides_the_top_attended_patches_of_a_hand_made_attention_map(monkeypatch):
    import lightning_modules.components.strategies.attmask as attmask

    mae = _mae()
    strategy = AttentionMasking(49, 0.75, mae.encoder, random_share=0.0)
    attention = torch.rand(2, 49, generator=torch.Generator().manual_seed(5)) * 0.01  # all distinct
    hot = [[0, 1, 2, 7, 8, 9], [40, 41, 47, 48, 33, 34]]
    for i, ids in enumerate(hot):
        attention[i, ids] = torch.linspace(1.0, 0.5, len(ids))
    attention[:, 20] = 0.02  # lukewarm: above every cold patch
    monkeypatch.setattr(attmask, "last_block_attention", lambda teacher, images, query: attention)
    draw = strategy.draw(_images(2), mae)
    for i, ids in enumerate(hot):
        assert (draw.mask[i, ids] == 1).all() and draw.mask[i, 20] == 1
    assert torch.equal(draw.scores[0, hot[0][0]], torch.tensor(1.0))  # the map is scaled per image
    shared = AttentionMasking(49, 0.75, mae.encoder, random_share=0.5)
    hidden = 49 - num_kept(49, 0.75)
    top = attention.topk(int(hidden * 0.5), 1).indices  # the top 18 always; the other 19 at random
    for _ in range(5):
        assert (torch.gather(shared.draw(_images(2), mae).mask, 1, top) == 1).all()


def test_attmask_ranks_by_the_teachers_attention_not_the_students():
    mae = _mae()
    strategy = AttentionMasking(49, 0.75, mae.encoder, random_share=0.0)
    with torch.no_grad():  # the student moves away from the teacher (as after training steps)
        for p in mae.encoder.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    x = _images(4)
    teacher_top = last_block_attention(strategy.teacher, x).topk(37, 1).indices
    student_top = last_block_attention(mae.encoder, x).topk(37, 1).indices
    hidden = strategy.draw(x, mae).mask
    assert (torch.gather(hidden, 1, teacher_top) == 1).all()
    assert not (torch.gather(hidden, 1, student_top) == 1).all()


def test_attmask_teacher_is_an_ema_of_the_encoder():
    mae = _mae()
    strategy = build_strategy("attmask", mae, ema_momentum=0.9)
    with torch.no_grad():
        for p in mae.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in strategy.teacher.parameters()]
    strategy.after_step(mae)
    for b, t, s in zip(before, strategy.teacher.parameters(), mae.encoder.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s, atol=1e-6)
    strategy.start(mae)
    assert all(torch.equal(t, s) for t, s in zip(strategy.teacher.parameters(), mae.encoder.parameters()))


# ----- AutoMAE ------------------------------------------------------------------------------
def test_adversarial_gradient_raises_the_logits_of_the_patches_with_above_average_error():
    torch.manual_seed(0)
    logits = torch.randn(3, 16, requires_grad=True)
    mask = torch.zeros(3, 16).scatter_(1, logits.detach().topk(10, 1).indices, 1.0)
    errors = torch.rand(3, 16)
    adversarial_objective(errors, relaxed_top_k(logits, mask, 0.5), mask).backward()
    hidden = mask.bool()
    mean = (errors * mask).sum(1, keepdim=True) / 10
    harder = (errors > mean) & hidden
    easier = (errors < mean) & hidden
    # gradient descent on the generator's loss raises the logits of the harder hidden patches
    assert (logits.grad[harder] < 0).all() and (logits.grad[easier] > 0).all()


def test_generator_steps_raise_the_reconstruction_error_it_hides():
    """With a fixed per-position error map, SGD on the generator's loss moves its top-k onto the
    high-error positions: the mean hidden error rises (with the sign flipped, it would fall)."""
    mae = _mae()
    strategy = AdversarialMasking(49, 0.75, 32, prior_weight=0.0)
    x = _images(16)
    errors = torch.linspace(0, 1, 49).expand(16, -1)  # position 48 is the hardest

    class Out:
        pass

    def hidden_error() -> float:
        strategy.eval()
        draw = strategy.draw(x, mae)
        strategy.train()
        return (errors * draw.mask).sum().item() / draw.mask.sum().item()

    opt = torch.optim.SGD(strategy.parameters(), lr=0.5)
    before = hidden_error()
    torch.manual_seed(1)
    for _ in range(30):
        draw = strategy.draw(x, mae)
        out = Out()
        out.errors = errors
        loss, _ = strategy.auxiliary_loss(x, mae, draw, out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert hidden_error() > before + 0.05


def test_generator_prior_pulls_the_mean_probability_to_the_ratio():
    from lightning_modules.components.strategies.automae import ratio_prior

    assert ratio_prior(torch.full((4, 9), 0.75), 0.75).item() == 0
    # per image mean 0.5 (0.0625) and per position mean 0.5 (0.0625)
    assert ratio_prior(torch.full((4, 9), 0.5), 0.75).item() == pytest.approx(0.125)


# ----- the module ---------------------------------------------------------------------------
def _strategy_cfg(data_root, tmp_path, name: str, extra=()):
    return compose_cfg([f"experiment=mae_{name}_small", *tiny_overrides(data_root), *TINY_VIT, "stages.finetune=null",
                        "stages.pretrain.trainer.max_epochs=2", "++stages.pretrain.data.batch_size=16",
                        "++stages.pretrain.trainer.limit_train_batches=3", *extra], tmp_path)


class _StopAfterFirstEpoch(L.Callback):
    """Stops fit after epoch 0 (its last.ckpt saved), as an interruption would."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


@pytest.mark.slow  # ~18 s each: three pretraining runs
@pytest.mark.parametrize("name", ["block", "hpm", "attmask", "automae"])
def test_strategy_pretraining_resumes_bit_exactly(name, data_root, tmp_path):
    straight = train(_strategy_cfg(data_root, tmp_path / "straight", name))
    train(_strategy_cfg(data_root, tmp_path / "first", name), callbacks=[_StopAfterFirstEpoch()])
    first_last = tmp_path / "first" / "pretrain" / "checkpoints" / "last.ckpt"
    resumed = train(_strategy_cfg(data_root, tmp_path / "resumed", name, [f"++stages.pretrain.ckpt_path={first_last}"]))
    a = torch.load(straight["pretrain/last_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(resumed["pretrain/last_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("masking.") for k in a) == (name != "block")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight["pretrain/val/loss"] == resumed["pretrain/val/loss"]
    for key in ("rho_recon_own_within", "rho_intensity_mask", "diversity"):  # every strategy's diagnostics are logged
        assert math.isfinite(straight[f"pretrain/val/mask_{key}"])


def test_diagnostics_and_teachers_leave_training_untouched():
    from lightning_modules.mae import MAEPretrain

    module = MAEPretrain(_mae(), num_classes=2, task="binary-class", masking="hpm")
    x = _images(8)
    state = torch.get_rng_state()
    out = module.mask_diagnostics(x)
    assert torch.equal(torch.get_rng_state(), state)  # the diagnostics' draws left the random stream as it was
    assert {"rho_recon_own", "rho_recon_own_within", "rho_intensity_mask_shuffled", "diversity"} <= set(out)
    module.train()
    assert module.masking.predictor.training and not module.masking.teacher_encoder.training


def test_a_scheduled_strategy_without_a_training_length_is_refused(data_root, tmp_path):
    cfg = _strategy_cfg(data_root, tmp_path, "hpm", ["stages.pretrain.trainer.max_epochs=-1",
                                                      "stages.pretrain.model.scheduler=null",
                                                      "++stages.pretrain.trainer.max_steps=-1",
                                                      "++stages.pretrain.trainer.limit_train_batches=1"])
    with pytest.raises(ValueError, match="trainer.max_epochs or trainer.max_steps"):
        train(cfg)
