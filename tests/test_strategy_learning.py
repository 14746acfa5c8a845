"""The masking strategies learn in real ``MAEPretrain`` training steps (a tiny ViT, 16 px, patch 4):
teachers follow their published EMA schedules from recorded values (checked with
``torch.optim.swa_utils.AveragedModel``), trained parts change, HPM's informed share grows with
the epoch and ranks with the teacher, the adversary's prior and AutoMAE's generator and
discriminator move the right way. Each test fails when that part stops learning or inverts."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.strategies import build_strategy
from lightning_modules.components.strategies.automae import rectangle_masks
from lightning_modules.components.vit import ViTEncoder
from lightning_modules.mae import MAEPretrain
from tests.helpers import save_encoder


def _mae(ratio: float = 0.75, seed: int = 0) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    enc = ViTEncoder(img_size=16, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2)
    return MaskedAutoencoder(enc, ratio, decoder_dim=16, decoder_depth=1, decoder_heads=2)


def _module(masking, tmp_path=None, lr: float = 1e-2) -> MAEPretrain:
    if isinstance(masking, dict) and masking.get("name") == "automae":
        masking = {"source": save_encoder(_mae(seed=7), tmp_path / "source.ckpt"), **masking}
    return MAEPretrain(_mae(), num_classes=2, task="binary-class", lr=lr, masking=masking, mask_diagnostics=False)


def _fit(module: MAEPretrain, epochs: int = 1, batches: int = 2, callbacks=()) -> L.Trainer:
    """``epochs`` x ``batches`` real training steps of 8 images (no validation)."""
    g = torch.Generator().manual_seed(0)
    n = 8 * batches
    data = TensorDataset(torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 2, (n,), generator=g))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=list(callbacks))
    trainer.fit(module, DataLoader(data, batch_size=8))
    return trainer


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


class TeacherRecorder(L.Callback):
    """Per training batch: (epoch, batch index over epochs, teachers before the step, teachers
    after, students after), for the (teacher, student) pairs ``pairs(module)`` names."""

    def __init__(self, pairs) -> None:
        self.pairs, self.rows, self.before = pairs, [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.before = [_params(t) for t, _ in self.pairs(module)]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        after = [_params(t) for t, _ in self.pairs(module)]
        students = [_params(s) for _, s in self.pairs(module)]
        self.rows.append((trainer.current_epoch, trainer.fit_loop.epoch_loop.total_batch_idx, self.before, after,
                          students))


def assert_ema(before: list[torch.Tensor], after: list[torch.Tensor], student: list[torch.Tensor], m: float) -> None:
    """``after`` is one EMA step (momentum m) of ``before`` towards ``student``, computed by
    torch's ``AveragedModel`` with an EMA ``avg_fn``; and the step moved the teacher."""
    holder = torch.nn.ParameterList([torch.nn.Parameter(p.clone()) for p in before])
    reference = AveragedModel(holder, avg_fn=lambda avg, new, n: m * avg + (1 - m) * new)
    reference.n_averaged.fill_(1)  # past the first call, which copies
    reference.update_parameters(torch.nn.ParameterList([torch.nn.Parameter(p) for p in student]))
    moved = max((a - b).abs().max().item() for a, b in zip(after, before))
    assert moved > 2e-6, "the teacher did not move (enough to tell momenta apart at this tolerance)"
    for got, want in zip(after, reference.module.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-7)  # a few float32 ulps


# ----- EMA teachers -------------------------------------------------------------------------
def test_hpm_teachers_follow_hpms_momentum_schedule_in_training():
    """HPM's schedule with a 2-epoch ramp: epoch 0 -> 0.999, 1 -> 0.99945, 2 -> 0.9999, for the
    teacher encoder, decoder (embedding and mask token) and loss predictor."""
    module = _module({"name": "hpm", "momentum_epochs": 2})
    recorder = TeacherRecorder(lambda m: m.masking.pairs(m.mae))
    _fit(module, epochs=3, batches=1, callbacks=[recorder])
    assert [row[0] for row in recorder.rows] == [0, 1, 2]
    for epoch, _, before, after, students in recorder.rows:
        m = 0.999 + min(epoch, 2) / 2 * (0.9999 - 0.999)
        for b, a, s in zip(before, after, students):
            assert_ema(b, a, s, m)


def test_attmask_teacher_follows_dinos_cosine_momentum_in_training():
    """AttMask's teacher over 3 steps: 1 + 0.5 * (0.996 - 1) * (1 + cos(pi * step / 3)), i.e.
    0.996, 0.997, 0.999 (DINO's cosine_scheduler)."""
    module = _module("attmask")
    recorder = TeacherRecorder(lambda m: [(m.masking.teacher, m.mae.encoder)])
    _fit(module, epochs=1, batches=3, callbacks=[recorder])
    assert [row[1] for row in recorder.rows] == [0, 1, 2]
    for (_, step, before, after, students), m in zip(recorder.rows, (0.996, 0.997, 0.999)):
        assert 1 + 0.5 * (0.996 - 1) * (1 + math.cos(math.pi * step / 3)) == pytest.approx(m)
        assert_ema(before[0], after[0], students[0], m)


# ----- trained parts ------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "trained", "frozen"), [
    ("hpm", ["predictor"], []),
    ("automae", ["scorer", "discriminator"], ["source"]),
    ("adversarial", ["generator"], []),
])
def test_strategy_parts_train_with_their_own_optimisers(name, trained, frozen, tmp_path):
    module = _module({"name": name}, tmp_path)
    start = {part: _params(getattr(module.masking, part)) for part in trained + frozen}
    _fit(module, epochs=1, batches=2)
    roles = module._optimizer_roles
    assert roles == (["mae", "masking", "critic", "probe"] if name == "automae" else ["mae", "masking", "probe"])
    for part in trained:
        now = _params(getattr(module.masking, part))
        changed = sum(not torch.equal(a, b) for a, b in zip(start[part], now))
        assert changed == len(now), f"{name}: {len(now) - changed} of {len(now)} {part} tensors did not train"
    for part in frozen:
        assert all(torch.equal(a, b) for a, b in zip(start[part], _params(getattr(module.masking, part))))
    if name == "automae":  # the discriminator is stepped by its own optimiser only
        critic = {id(p) for g in module.trainer.optimizers[2].param_groups for p in g["params"]}
        masking = {id(p) for g in module.trainer.optimizers[1].param_groups for p in g["params"]}
        assert critic == {id(p) for p in module.masking.discriminator.parameters()} and not critic & masking


# ----- HPM ----------------------------------------------------------------------------------
class AlwaysHidden(L.Callback):
    """At each epoch start: how many patches of each of 4 fixed images the strategy hides in all
    of 40 draws (its informed top: a random patch stays hidden 40 times with p < 1e-5)."""

    def __init__(self) -> None:
        self.counts: list[list[int]] = []
        self.images = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))

    def on_train_epoch_start(self, trainer, module) -> None:
        with isolate_rng(), torch.no_grad():
            masks = torch.stack([module.mask_draw(self.images).mask for _ in range(40)])
        self.counts.append(masks.bool().all(0).sum(1).tolist())


def test_hpm_informed_share_grows_with_the_epoch():
    """HPM's easy-to-hard schedule over 4 epochs, 12 of 16 patches hidden, hard_share 0.5: the
    predicted-hardest int(12 * 0.5 * (e + 1) / 4) = 1, 3, 4, 6 patches are always hidden."""
    module = _module("hpm")
    counter = AlwaysHidden()
    _fit(module, epochs=4, batches=1, callbacks=[counter])
    assert counter.counts == [[n] * 4 for n in (1, 3, 4, 6)]


def test_hpm_ranks_with_the_teacher_not_the_student():
    module = _module({"name": "hpm", "hard_share": 1.0})
    _fit(module, epochs=1, batches=2)
    hpm, mae = module.masking, module.mae
    with torch.no_grad():  # the student far from the teacher (as after many steps)
        for p in [*mae.encoder.parameters(), *hpm.predictor.parameters()]:
            p.add_(torch.randn_like(p))
    x = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    every = torch.arange(16).expand(6, -1)
    with torch.no_grad():
        teacher = hpm.predict(hpm.teacher_encoder(x), every, hpm.teacher_decoder, hpm.teacher_predictor)
        student = hpm.predict(mae.encoder(x), every, mae.decoder, hpm.predictor)
    hidden = hpm.draw(x, mae, progress=1.0).mask.bool()
    teacher_top = torch.zeros_like(hidden).scatter_(1, teacher.topk(12, 1).indices, True)
    student_top = torch.zeros_like(hidden).scatter_(1, student.topk(12, 1).indices, True)
    assert torch.equal(hidden, teacher_top) and not torch.equal(hidden, student_top)


# ----- adversarial (ADIOS-style) ------------------------------------------------------------
def test_adversary_prior_pulls_the_masking_probability_to_the_ratio_in_training():
    module = _module({"name": "adversarial", "adversary_weight": 0.0, "prior_weight": 1.0})
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(5))

    def mean_probability() -> float:
        with torch.no_grad():
            return module.masking.generator.logits(module.mae.encoder.embed(x)).sigmoid().mean().item()

    before = mean_probability()
    _fit(module, epochs=1, batches=4)
    assert abs(mean_probability() - 0.75) < abs(before - 0.75) - 0.02  # from ~0.5 towards 0.75


# ----- AutoMAE ------------------------------------------------------------------------------
def _automae(tmp_path, **options):
    mae = _mae()
    strategy = build_strategy("automae", mae, source=save_encoder(_mae(seed=7), tmp_path / "s.ckpt"), **options)
    return mae, strategy.train()


def test_automae_generator_descends_the_reconstruction_loss(tmp_path):
    """AutoMAE trains the generator *with* the reconstruction loss, through its straight-through
    path: with G = d loss / d token scale (autograd on a plain scale of ones), the generator's
    gradient is that of mask_factor * sum(G * p) over its probabilities p, and a step against it
    lowers that first-order estimate of the loss (mask_factor * G . dp < 0)."""
    mae, strategy = _automae(tmp_path, adversary_weight=0.0)
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(6))
    scorer = list(strategy.scorer.parameters())
    torch.manual_seed(0)
    draw = strategy.draw(x, mae)
    mae(x, draw.masking, token_scale=draw.token_scale).loss.backward(retain_graph=True)
    grads = [p.grad.clone() for p in scorer]
    scale = torch.ones(8, 16, requires_grad=True)
    mae(x, draw.masking, token_scale=scale).loss.backward()
    surrogate = torch.autograd.grad((0.5 * scale.grad * draw.extra["prob"]).sum(), scorer)
    for got, want in zip(grads, surrogate):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-12)
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(scorer, grads):
            p.sub_(0.05 * g / norm)  # a step of length 0.05 against the gradient
    torch.manual_seed(0)  # the same Gumbel and uniform noise
    change = (0.5 * scale.grad * (strategy.draw(x, mae).extra["prob"] - draw.extra["prob"]).detach()).sum().item()
    assert norm > 0 and change < 0


def test_automae_lsgan_signs_real_rectangles_up_generated_masks_down_and_the_generator_chases_d(tmp_path):
    """The discriminator's loss is LSGAN's with real rectangles -> 1 and fresh generator samples ->
    0 (recomputed by hand from the same draws); the generator's term pulls D of its masks to 1,
    and a small generator step on it raises D of its masks (same noise) without touching D."""
    mae, strategy = _automae(tmp_path, adversary_weight=0.2)
    d = strategy.discriminator.eval()  # fixed spectral norms: every pass below sees the same D
    x = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(8))
    torch.manual_seed(1)
    draw = strategy.draw(x, mae)
    torch.manual_seed(2)
    loss, _ = strategy.critic_loss(x, mae, draw)
    torch.manual_seed(2)  # the same rectangles and the same fresh Gumbel sample
    real = rectangle_masks(16, 4, strategy.options.rect_area, np.random.default_rng(int(torch.randint(0, 2**62, (1,)))))
    with torch.no_grad():
        fake = strategy.sample(draw.extra["attention"])
        assert loss.item() == pytest.approx((((d(real) - 1) ** 2).mean() + (d(fake) ** 2).mean()).item(), rel=1e-6)
    adversary, _ = strategy.auxiliary_loss(x, mae, draw, None)
    assert adversary.item() == pytest.approx(0.2 * ((d(draw.extra["prob"]) - 1) ** 2).mean().item(), rel=1e-6)
    adversary.backward()
    assert all(p.grad is None for p in d.parameters())  # the generator's term leaves D alone
    with torch.no_grad():
        before = d(draw.extra["prob"]).mean().item()
        for p in strategy.scorer.parameters():
            p.sub_(1e-2 * p.grad)
        torch.manual_seed(1)
        assert d(strategy.draw(x, mae).extra["prob"]).mean().item() > before


def test_automae_generator_is_alive_at_initialisation_where_the_published_head_was_dead(tmp_path):
    """[CLS] attention of a small ViT is about 1 / L with little spread. AutoMAE's head with
    heads // 2 = 1 ReLU channel and PyTorch's default bias is dead for such input in about half
    of the seeds (seed 1 of evidence_pneumonia was); ours (at least 4 channels, bias 0) is alive
    in every one of 50 seeds, and a dead generator stops training with a message."""
    from lightning_modules.components.strategies.automae import AttentionScorer

    g = torch.Generator().manual_seed(0)
    attention = (1 / 49 + 0.001 * torch.randn(64, 3, 49, generator=g)).clamp_min(0)  # 3 heads, 7 x 7
    dead = {"published": 0, "ours": 0}
    for seed in range(50):
        torch.manual_seed(seed)
        published = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3, padding=1), torch.nn.ReLU())
        dead["published"] += bool((published(attention.reshape(64, 3, 7, 7)) == 0).all())
        torch.manual_seed(seed)
        ours = AttentionScorer(heads=3, grid=7)
        assert ours.net[0].out_channels == 4
        dead["ours"] += bool((ours.net[:2](attention.reshape(64, 3, 7, 7)) == 0).all())
    assert dead["ours"] == 0 and dead["published"] >= 10, dead

    mae, strategy = _automae(tmp_path, hidden=2)
    assert strategy.scorer.net[0].out_channels == 2
    with torch.no_grad():
        strategy.scorer.net[0].bias.fill_(-10.0)  # every hidden unit below zero: no gradient can reach it
    with pytest.raises(RuntimeError, match=r"generator is dead.*model\.masking\.hidden"):
        strategy.draw(torch.randn(4, 1, 16, 16), mae)
    strategy.eval().draw(torch.randn(4, 1, 16, 16), mae)  # diagnostics of a dead generator still run
