"""Finite-difference MLO-MAE hypergradient against the exact double-backward reference."""

import pytest
import torch

from lightning_modules.components.hypergradient import (
    LevelBatches,
    exact_hypergradient,
    mlo_hypergradient,
    perturbed,
)
from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.masking import MLPMaskingNet, PatchScorer
from lightning_modules.components.patches import masking_from_scores
from lightning_modules.components.vit import ClassificationHead, ViTEncoder


def tiny_setup(dtype=torch.float32, masknet="mlp", seed=0):
    torch.manual_seed(seed)
    enc = ViTEncoder(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2)
    mae = MaskedAutoencoder(enc, 0.75, decoder_dim=8, decoder_depth=1, decoder_heads=2)
    head = ClassificationHead(16, 3, dropout=0.3)
    net = MLPMaskingNet(enc.num_patches, 16, hidden=8) if masknet == "mlp" else PatchScorer(16, hidden=8)
    for m in (mae, head, net):
        m.to(dtype)
    x1 = torch.randn(4, 1, 8, 8, dtype=dtype)
    tokens = enc.embed(x1).detach()
    masking = masking_from_scores(net(tokens).detach(), 0.75)
    b = LevelBatches(x1, tokens, masking, torch.randn(5, 1, 8, 8, dtype=dtype), torch.randint(0, 3, (5,)),
                     torch.randn(6, 1, 8, 8, dtype=dtype), torch.randint(0, 3, (6,)))
    return mae, head, net, b


def _rel_err(a, b):
    a, b = torch.cat([t.flatten() for t in a]).double(), torch.cat([t.flatten() for t in b]).double()
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("schedule", ["ours", "original"])
@pytest.mark.parametrize("masknet", ["mlp", "patch_scorer"])
def test_finite_difference_matches_exact_fp64_reference(schedule, masknet):
    mae, head, net, b = tiny_setup(torch.float64, masknet)
    exact = exact_hypergradient(mae, head, net, b, xi=0.5, eta=0.5)
    assert sum(g.abs().sum() for g in exact) > 0  # a non-trivial second-order signal
    # fp32 copy of the same model for the finite differences (as in training). On this tiny
    # model (||theta|| ~ 10) the O(alpha^2) truncation error of the default alpha = 0.01 is
    # ~3e-3 (see the scaling test below); alpha = 1e-3 keeps the perturbation as small
    # relative to the weights as alpha = 0.01 is for a real ViT.
    fd = mlo_hypergradient(mae.float(), head.float(), net.float(),
                           LevelBatches(b.x1.float(), b.tokens1.float(), b.masking1, b.x2.float(), b.y2,
                                        b.x3.float(), b.y3),
                           xi=0.5, eta=0.5, alpha=1e-3, schedule=schedule)
    assert _rel_err(fd, exact) < 1e-3


def test_finite_difference_error_is_second_order_in_alpha():
    mae, head, net, b = tiny_setup(torch.float64)
    exact = exact_hypergradient(mae, head, net, b, xi=0.5, eta=0.5)
    errors = [_rel_err(mlo_hypergradient(mae, head, net, b, xi=0.5, eta=0.5, alpha=a), exact) for a in (1e-2, 1e-3)]
    assert 80 < errors[0] / errors[1] < 120  # central differences: error ~ alpha^2


def test_schedules_agree_with_each_other():
    mae, head, net, b = tiny_setup(torch.float64)
    ours = mlo_hypergradient(mae, head, net, b, xi=0.1, eta=0.2, alpha=1e-4, schedule="ours")
    original = mlo_hypergradient(mae, head, net, b, xi=0.1, eta=0.2, alpha=1e-4, schedule="original")
    assert _rel_err(ours, original) < 1e-5


def test_weights_bit_identical_after_finite_differences():
    mae, head, net, b = tiny_setup()
    before = {k: v.clone() for m in (mae, head, net) for k, v in m.state_dict().items()}
    mlo_hypergradient(mae, head, net, b, xi=0.3, eta=0.3)
    after = {k: v for m in (mae, head, net) for k, v in m.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert mae.training and head.training  # modes restored


def test_perturbed_restores_exactly_even_with_rounding():
    p = torch.nn.Parameter(torch.tensor([1.0, 1e-8, 3.3333333]))
    saved = p.detach().clone()
    with perturbed([p], [torch.tensor([0.1, 0.7, 1e-3])], 0.0123456):
        assert not torch.equal(p.detach(), saved)
    assert torch.equal(p.detach(), saved)
