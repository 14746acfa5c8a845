"""The masking strategies of MAEPretrain (model.masking): the options group, exact ratio, block
shapes, HPM's ranking loss and shared predictor, AttMask's and AutoMAE's published draws on
hand-made maps, the adversary's gradient, bit-exact resume. (Learning in real training steps:
test_strategy_learning.py.)"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.patches import num_kept
from lightning_modules.components.strategies import (
    OPTIONS,
    STRATEGIES,
    build_strategy,
    masking_options,
)
from lightning_modules.components.strategies.adversarial import (
    AdversarialMasking,
    AdversarialOptions,
    adversarial_objective,
    relaxed_top_k,
)
from lightning_modules.components.strategies.attention import last_block_attention
from lightning_modules.components.strategies.attmask import AttentionMasking, AttMaskOptions
from lightning_modules.components.strategies.base import mixed_top_k
from lightning_modules.components.strategies.block import block_mask
from lightning_modules.components.strategies.hpm import relative_ranking_loss
from lightning_modules.components.strategies.schedules import cosine_momentum, linear_momentum
from lightning_modules.components.vit import ViTEncoder
from pipeline.cli import CONF_DIR, train
from tests.helpers import TINY_VIT, compose_cfg, save_encoder, tiny_overrides


def _mae(img=28, patch=4, ratio=0.75, seed=0) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    enc = ViTEncoder(img_size=img, patch_size=patch, in_chans=1, embed_dim=32, depth=2, num_heads=2)
    return MaskedAutoencoder(enc, ratio, decoder_dim=16, decoder_depth=1, decoder_heads=2)


def _images(n: int, img: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, img, img, generator=torch.Generator().manual_seed(seed))


def _build(name: str, mae: MaskedAutoencoder, tmp_path, **options):
    """``build_strategy``; AutoMAE's source is a checkpoint of another MAE of the same shape."""
    if name == "automae" and "source" not in options:
        other = _mae(img=mae.encoder.img_size, ratio=mae.mask_ratio, seed=99)
        options["source"] = save_encoder(other, tmp_path / "source.ckpt")
    return build_strategy(name, mae, **options)


# ----- the group model.masking --------------------------------------------------------------
def test_each_masking_config_is_its_strategys_published_defaults():
    """conf/model/masking/<name>.yaml lists every option of the dataclass with its default."""
    import dataclasses

    from omegaconf import OmegaConf

    from lightning_modules.mlo_options import MaskingOptions

    files = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in (CONF_DIR / "model" / "masking").glob("*.yaml")}
    assert set(files) == {*OPTIONS, "mlo"} and set(OPTIONS) == set(STRATEGIES)  # mlo: model=mlo_mae's group
    for name, kind in {**OPTIONS, "mlo": MaskingOptions}.items():
        defaults = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
                    for f in dataclasses.fields(kind)}
        assert files[name] == {"name": name, **defaults}, name
    assert OPTIONS["hpm"]().momentum == (0.999, 0.9999) and OPTIONS["hpm"]().predictor == "shared"
    assert AttMaskOptions().masking_prob == 0.5 and AttMaskOptions().momentum == (0.996, 1.0)


def test_masking_options_from_a_name_a_mapping_or_options_and_their_errors():
    assert masking_options("attmask") == AttMaskOptions()
    assert masking_options({"name": "attmask", "variant": "hints", "ratio_range": [0.1, 0.5]}) == AttMaskOptions(
        variant="hints", ratio_range=(0.1, 0.5))
    assert masking_options(None).name == "random"
    hpm = masking_options({"name": "hpm", "momentum": 0.99})
    assert hpm.momentum == (0.99, 0.99) and hpm.as_config()["momentum"] == [0.99, 0.99]
    assert masking_options(hpm.as_config()) == hpm
    for value, match in [
        ("mlo", "model=mlo_mae"),
        ("checkerboard", r"model.masking='checkerboard' is invalid; allowed: \['random', "),
        ({"variant": "hints"}, "has no name; set model.masking.name"),
        ({"name": "block", "hard_share": 0.5}, r"no option \['hard_share'\] for model.masking='block'; allowed: "
                                               r"\['min_patches', 'min_aspect'\]"),
        ({"name": "attmask", "variant": "top"}, r"model.masking.variant='top' is invalid; allowed: \['high', 'hints'"),
        ({"name": "attmask", "masking_prob": 1.5}, r"model.masking.masking_prob=1.5 is invalid; allowed: \[0.0, 1.0\]"),
        ({"name": "attmask", "ratio_range": [0.5, 0.1]}, "model.masking.ratio_range=.* 0 < low <= high < 1"),
        ({"name": "hpm", "momentum": [0.9, 0.99, 0.999]}, "model.masking.momentum=.* \\[start, end\\]"),
        ({"name": "hpm", "momentum": 1.0}, r"model.masking.momentum=1.0 is invalid; allowed: \[0.0, 1.0\)"),
        ({"name": "hpm", "predictor": "own"}, r"model.masking.predictor='own' is invalid; allowed: \['shared'"),
        ({"name": "automae"}, "model.masking.source=None is invalid; allowed: a checkpoint of a pretrained MAE"),
        ({"name": "adversarial", "tau": 0}, "model.masking.tau=0 is invalid; allowed: > 0"),
        (3, "a strategy name"),
    ]:
        with pytest.raises(ValueError, match=match):
            masking_options(value)
    with pytest.raises(ValueError, match="model.masking.show_max=0.2 is invalid; allowed: at most the lowest mask ratio"):
        build_strategy({"name": "attmask", "variant": "hints", "show_max": 0.2, "ratio_range": [0.1, 0.5]}, _mae())


def test_the_momentum_schedules_match_hand_computed_values():
    # HPM's code: decay = 0.999 + epoch / 100 * (0.9999 - 0.999) for epoch < 100, then 0.9999
    assert linear_momentum((0.999, 0.9999), 0, 100) == 0.999
    assert linear_momentum((0.999, 0.9999), 50, 100) == pytest.approx(0.99945, abs=1e-12)
    assert linear_momentum((0.999, 0.9999), 250, 100) == pytest.approx(0.9999, abs=1e-12)
    # DINO's cosine_scheduler(0.996, 1, ...): 1 + 0.5 * (0.996 - 1) * (1 + cos(pi * it / total))
    assert cosine_momentum((0.996, 1.0), 0.0) == pytest.approx(0.996)
    assert cosine_momentum((0.996, 1.0), 0.5) == pytest.approx(0.998)
    assert cosine_momentum((0.996, 1.0), 1 / 3) == pytest.approx(0.997)
    assert cosine_momentum((0.996, 1.0), 1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("ratio", [0.75, 0.6])
def test_every_strategy_hides_exactly_the_ratio_and_its_masking_is_consistent(name, ratio, tmp_path):
    mae = _mae(ratio=ratio)  # 7 x 7 = 49 patches: 0.75 -> 37 hidden, 0.6 -> 29
    strategy = _build(name, mae, tmp_path)
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
    overlap = torch.gather(early.mask, 1, top).float().mean().item()
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
    known = torch.randn(3, 49, generator=torch.Generator().manual_seed(4))
    seen = {}

    def fake_predictor(tokens):
        seen["tokens"] = tokens
        return known

    monkeypatch.setattr(hpm.predictor, "forward", fake_predictor)
    loss, logs = hpm.auxiliary_loss(x, mae, draw, out)
    # the predictor reads the decoder's own input for this draw's layout (HPM's shared embedding)
    assert torch.equal(seen["tokens"], mae.decoder.embed_tokens(out.latent, draw.masking[2]))
    hidden = draw.mask.bool()
    expected = relative_ranking_loss(known[hidden].view(3, 37), out.errors.detach()[hidden].view(3, 37))
    assert loss.item() == pytest.approx(2.0 * expected.item(), rel=1e-6)
    assert logs["train/hpm_rank_loss"].item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("predictor", ["shared", "separate"])
def test_hpm_loss_predictor_shares_the_decoders_embedding_and_mask_token_as_hpm_does(predictor):
    """shared (HPM's code, the default): the ranking loss trains the decoder's embedding and mask
    token, which the predictor has none of; separate: the predictor has its own, the decoder's get
    no gradient from it."""
    mae = _mae()
    hpm = build_strategy("hpm", mae, predictor=predictor)
    x = _images(4)
    draw = hpm.draw(x, mae, progress=1.0)
    out = mae(x, draw.masking)
    out = type(out)(**{**out.__dict__, "errors": out.errors.detach() + torch.rand_like(out.errors)})
    loss, _ = hpm.auxiliary_loss(x, mae, draw, out)
    loss.backward()
    own = {n.split(".")[0] for n, _ in hpm.predictor.named_parameters()}
    decoder_grads = [mae.decoder.embed.weight.grad, mae.decoder.mask_token.grad]
    if predictor == "shared":
        assert not own & {"embed", "mask_token"} and all(g is not None and g.abs().sum() > 0 for g in decoder_grads)
        assert {"teacher_encoder", "teacher_decoder", "teacher_predictor"} == set(hpm.teachers)
    else:
        assert {"embed", "mask_token"} <= own and all(g is None for g in decoder_grads)
    assert build_strategy("hpm", mae).options.predictor == "shared"  # the published default


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


def _attmask_on_a_fixed_map(monkeypatch, attention: torch.Tensor, ratio: float = 0.5, **options):
    """AttMask on a 4 x 4 grid whose teacher attention is ``attention`` (B, 16)."""
    import lightning_modules.components.strategies.attmask as attmask

    monkeypatch.setattr(attmask, "last_block_attention", lambda teacher, images, query: attention)
    mae = _mae(img=16, ratio=ratio)
    strategy = build_strategy("attmask", mae, **options)
    return lambda: strategy.draw(_images(len(attention), img=16), mae).mask.bool()


# 16 distinct attention values per image; the rank of patch i (0 = most attended) is RANKS[b][i]
RANKS = [[3, 0, 8, 15, 1, 9, 14, 2, 10, 13, 4, 11, 12, 5, 7, 6], [15 - r for r in range(16)]]
ATTENTION = 1.0 - torch.tensor(RANKS, dtype=torch.float) / 16


def _ranked_set(b: int, ranks) -> set[int]:
    return {i for i, r in enumerate(RANKS[b]) if r in ranks}


def test_attmask_high_and_low_hide_the_most_and_least_attended_patches(monkeypatch):
    # ratio 0.5 of 16 patches: 8 hidden; masking_prob 1: every image takes the attention-guided mask
    high = _attmask_on_a_fixed_map(monkeypatch, ATTENTION, masking_prob=1.0)()
    low = _attmask_on_a_fixed_map(monkeypatch, ATTENTION, masking_prob=1.0, variant="low")()
    for b in range(2):
        assert set(torch.nonzero(high[b]).flatten().tolist()) == _ranked_set(b, range(8))
        assert set(torch.nonzero(low[b]).flatten().tolist()) == _ranked_set(b, range(8, 16))


def test_attmask_hints_reveal_some_of_the_top_show_max_patches_again(monkeypatch):
    """AttMask-Hint with ratio 0.5, show_max 0.25 on 16 patches: the top 8 are masked, then
    int(0.25 * 0.5 * 16) = 2 of the int(0.25 * 16) = 4 most attended revealed at random."""
    draw = _attmask_on_a_fixed_map(monkeypatch, ATTENTION, masking_prob=1.0, variant="hints", show_max=0.25)
    torch.manual_seed(0)
    revealed = []
    for _ in range(60):
        hidden = draw()
        for b in range(2):
            ids = set(torch.nonzero(hidden[b]).flatten().tolist())
            assert len(ids) == 6 and _ranked_set(b, range(4, 8)) <= ids <= _ranked_set(b, range(8))
            revealed.append(frozenset(_ranked_set(b, range(4)) - ids))
    assert {len(r) for r in revealed} == {2} and len(set(revealed)) > 6  # 2 of the top 4, not always the same


def test_attmask_takes_the_informed_mask_for_a_masking_prob_share_of_the_images(monkeypatch):
    attention = ATTENTION[:1].expand(200, -1)
    top = torch.zeros(16, dtype=torch.bool)
    top[list(_ranked_set(0, range(8)))] = True
    torch.manual_seed(1)
    for prob, low, high in ((1.0, 200, 200), (0.0, 0, 1), (0.5, 75, 125)):
        hidden = _attmask_on_a_fixed_map(monkeypatch, attention, masking_prob=prob)()
        informed = (hidden == top).all(1).sum().item()  # a random 8-of-16 mask equals the top 8 with p = 1 / 12870
        assert low <= informed <= high, (prob, informed)
        assert (hidden.sum(1) == 8).all()  # the random ones hide as many


def test_attmask_ratio_range_draws_one_ratio_per_training_batch(monkeypatch):
    draw = _attmask_on_a_fixed_map(monkeypatch, ATTENTION, ratio=0.75, ratio_range=[0.1, 0.5])
    counts = set()
    torch.manual_seed(2)
    for _ in range(100):
        hidden = draw()
        assert hidden.sum(1).unique().numel() == 1  # one ratio per batch
        counts.add(int(hidden[0].sum()))
    assert min(counts) >= 16 - round(16 * 0.9) and max(counts) <= 16 - round(16 * 0.5) and len(counts) >= 4


def test_attmask_ranks_by_the_teachers_attention_not_the_students():
    mae = _mae()
    strategy = AttentionMasking(mae, AttMaskOptions(masking_prob=1.0))
    with torch.no_grad():  # the student moves away from the teacher (as after training steps)
        for p in mae.encoder.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    x = _images(4)
    teacher_top = last_block_attention(strategy.teacher, x).topk(37, 1).indices
    student_top = last_block_attention(mae.encoder, x).topk(37, 1).indices
    hidden = strategy.draw(x, mae).mask
    assert (torch.gather(hidden, 1, teacher_top) == 1).all()
    assert not (torch.gather(hidden, 1, student_top) == 1).all()


# ----- AutoMAE ------------------------------------------------------------------------------
def test_automae_masks_follow_the_published_rule_on_a_hand_worked_example():
    """8 patches, ratio 0.5 (4 kept): the generator's top 4 (patches 0, 2, 4, 3) add mask_factor to
    the uniform noise, the 4 lowest noise values are kept (AutoMAE's random_masking with a mask)."""
    from lightning_modules.components.strategies.automae import biased_masking

    prob = torch.tensor([[0.30, 0.02, 0.20, 0.12, 0.15, 0.05, 0.10, 0.06]], requires_grad=True)
    uniform = torch.tensor([[0.90, 0.10, 0.20, 0.80, 0.05, 0.65, 0.30, 0.60]])
    # mask_factor 0.5: noise = [1.4, 0.1, 0.7, 1.3, 0.55, 0.65, 0.3, 0.6] -> kept 1, 6, 4, 7
    (ids_keep, mask, _), noise = biased_masking(prob, uniform, 0.5, 0.5)
    assert mask.tolist() == [[1, 0, 1, 1, 0, 1, 0, 0]] and sorted(ids_keep[0].tolist()) == [1, 4, 6, 7]
    assert torch.allclose(noise, torch.tensor([[1.4, 0.1, 0.7, 1.3, 0.55, 0.65, 0.3, 0.6]]))
    noise.sum().backward()  # straight-through: the hard top-4's gradient is prob's, times mask_factor
    assert torch.allclose(prob.grad, torch.full_like(prob, 0.5))
    assert biased_masking(prob, uniform, 0.5, 0.0)[0][1].tolist() == [[1, 0, 0, 1, 0, 1, 0, 1]]  # the noise alone
    assert biased_masking(prob, uniform, 0.5, 2.0)[0][1].tolist() == [[1, 0, 1, 1, 1, 0, 0, 0]]  # the top 4


def test_automae_reads_its_sources_attention_per_head_and_samples_a_gumbel_softmax(tmp_path):
    from lightning_modules.components.strategies.attention import last_block_attention_maps

    mae, source = _mae(img=16), _mae(img=16, seed=5)
    strategy = build_strategy("automae", mae, source=save_encoder(source, tmp_path / "s.ckpt"))
    assert all(torch.equal(a, b) for a, b in zip(strategy.source.state_dict().values(),
                                                 source.encoder.state_dict().values()))
    x = _images(3, img=16)
    attention = strategy.attention(x)
    assert attention.shape == (3, 2, 16)
    assert torch.allclose(attention, last_block_attention_maps(source.encoder, x)[:, :, 0, 1:])
    strategy.eval()
    expected = strategy.scorer(attention).exp()  # eval: the generator's probabilities, no noise
    assert torch.allclose(strategy.draw(x, mae).extra["prob"], expected) and torch.allclose(expected.sum(1), torch.ones(3))
    strategy.train()
    draw = strategy.draw(x, mae)
    assert torch.allclose(draw.extra["prob"].sum(1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(draw.extra["prob"], expected, atol=1e-3)  # Gumbel noise in training
    assert torch.equal(draw.token_scale, torch.ones(3, 16)) and draw.token_scale.requires_grad
    assert draw.mask.sum(1).tolist() == [12, 12, 12]


def test_automae_source_is_a_checkpoint_file_or_a_wandb_artifact(tmp_path, monkeypatch):
    import shutil
    import types

    import wandb

    mae, source = _mae(img=16), _mae(img=16, seed=5)
    ckpt = save_encoder(source, tmp_path / "source.ckpt")

    class Artifact:
        def download(self, root: str) -> str:
            (tmp_path / "cache").mkdir(exist_ok=True)
            shutil.copy(ckpt, tmp_path / "cache" / "model.ckpt")
            return str(tmp_path / "cache")

    monkeypatch.setenv("MEDMAE_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setattr(wandb, "Api", lambda: types.SimpleNamespace(artifact=lambda name, type=None: Artifact()))
    strategy = build_strategy("automae", mae, source="wandb:me/medmae/model-mae:v3")
    assert torch.equal(strategy.source.blocks[0].attn.qkv.weight, source.encoder.blocks[0].attn.qkv.weight)
    assert not torch.equal(strategy.source.blocks[0].attn.qkv.weight, mae.encoder.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match="model.masking.source='.*missing.ckpt': pretrained checkpoint not found"):
        build_strategy("automae", mae, source=str(tmp_path / "missing.ckpt"))
    deeper = MaskedAutoencoder(ViTEncoder(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=3, num_heads=2),
                               0.75, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    with pytest.raises(ValueError, match="model.masking.source=.*does not match the encoder"):
        build_strategy("automae", deeper, source=ckpt)


def test_automae_real_masks_are_random_rectangles_softmaxed_over_the_grid():
    from lightning_modules.components.strategies.automae import rectangle_masks

    masks = rectangle_masks(200, 8, (10 / 64, 40 / 64), np.random.default_rng(0))
    assert masks.shape == (200, 64) and torch.allclose(masks.sum(1), torch.ones(200))
    for m in masks.log().reshape(200, 8, 8):
        inside = (m - m.min()) > 0.3  # 0.5 above the U(0, 0.1) floor
        rows, cols = torch.nonzero(inside, as_tuple=True)
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert inside.sum() == h * w  # one filled rectangle
        assert 2 <= w <= 6 and any(h == min(8, math.ceil(a / w)) for a in range(10, 41))


def test_automae_experiment_pretrains_its_source_first_or_takes_a_given_checkpoint(tmp_path):
    from pipeline.stage_config import compose_stage
    from pipeline.stages import stage_order

    cfg = compose_cfg(["experiment=mae_automae_small"], tmp_path / "a")
    assert stage_order(cfg) == ["source", "pretrain", "finetune"]
    assert dict(cfg.stages.pretrain.links) == {"model.masking.source": "source.last_checkpoint"}
    assert compose_stage(cfg, "source", tmp_path / "s").model.masking == {"name": "random"}  # a plain MAE
    given = compose_cfg(["experiment=mae_automae_small", "stages.source=null", "~stages.pretrain.links",
                         "stages.pretrain.model.masking.source=wandb:me/medmae/model-mae:v0"], tmp_path / "b")
    assert stage_order(given) == ["pretrain", "finetune"]
    masking = compose_stage(given, "pretrain", tmp_path / "p").model.masking
    assert masking.name == "automae" and masking.source == "wandb:me/medmae/model-mae:v0"


# ----- adversarial (ADIOS-style) ------------------------------------------------------------
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
    strategy = AdversarialMasking(mae, AdversarialOptions(prior_weight=0.0))
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
    from lightning_modules.components.strategies.adversarial import ratio_prior

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
@pytest.mark.parametrize("name", ["block", "hpm", "attmask", "automae", "adversarial"])
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
