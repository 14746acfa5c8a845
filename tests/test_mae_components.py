import pytest
import torch

from lightning_modules.components.mae import MaskedAutoencoder, reconstruction_loss, uniformity_loss
from lightning_modules.components.patches import (
    gather_tokens,
    masking_from_scores,
    num_kept,
    patchify,
    random_masking,
    unpatchify,
)
from lightning_modules.components.vit import ViTClassifier, ViTEncoder


def tiny_encoder(in_chans=3, img_size=16, patch_size=4, **kw):
    return ViTEncoder(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=32, depth=2,
                      num_heads=2, **kw)


@pytest.mark.parametrize("channels", [1, 3])
def test_patchify_unpatchify_round_trip(channels):
    x = torch.randn(2, channels, 12, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 9, 16 * channels)
    assert torch.equal(unpatchify(p, 4, channels), x)
    # patch 0 is the top-left 4x4 block, channel last
    assert torch.equal(p[0, 0].reshape(4, 4, channels), x[0, :, :4, :4].permute(1, 2, 0))


def test_patchify_rejects_indivisible_size():
    with pytest.raises(ValueError, match="not divisible by patch size 5"):
        patchify(torch.randn(1, 1, 12, 12), 5)


@pytest.mark.parametrize("n, r", [(64, 0.75), (49, 0.75), (256, 0.9), (10, 0.33)])
def test_random_masking_keeps_round_of_visible_and_restores_order(n, r):
    g = torch.Generator().manual_seed(0)
    ids_keep, mask, ids_restore = random_masking(3, n, r, generator=g)
    k = round(n * (1 - r))
    assert num_kept(n, r) == k and ids_keep.shape == (3, k)
    assert torch.equal(mask.sum(1), torch.full((3,), float(n - k)))
    for b in range(3):
        assert set(ids_keep[b].tolist()) == set(torch.nonzero(mask[b] == 0).flatten().tolist())
    tokens = torch.arange(n).float().expand(3, n).unsqueeze(-1)
    shuffled = gather_tokens(tokens, torch.argsort(ids_restore, dim=1))
    assert torch.equal(gather_tokens(shuffled, ids_restore), tokens)  # restore undoes the shuffle


def test_masking_keeps_lowest_scores():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.2]])
    ids_keep, mask, _ = masking_from_scores(scores, 0.5)
    assert ids_keep.tolist() == [[1, 3]]
    assert mask.tolist() == [[1, 0, 1, 0]]


def test_reconstruction_loss_zero_for_perfect_and_ignores_visible_patches():
    target = torch.randn(2, 8, 12)
    mask = torch.tensor([[1, 0, 1, 0, 1, 0, 1, 0]] * 2).float()
    assert reconstruction_loss(target.clone(), target, mask).item() == 0
    pred = target.clone()
    pred[mask == 0] += 100.0  # wrong only where visible
    assert reconstruction_loss(pred, target, mask).item() == 0
    pred = target.clone()
    pred[0, 0] += 1.0  # one masked patch off by 1 in all 12 pixels
    assert reconstruction_loss(pred, target, mask).item() == pytest.approx(1.0 / 8)


def test_reconstruction_loss_norm_pix_and_weights():
    target = torch.randn(1, 4, 6) * 3 + 5
    mask = torch.ones(1, 4)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    assert reconstruction_loss(normed, target, mask, norm_pix=True).item() == pytest.approx(0, abs=1e-6)
    pred = torch.zeros(1, 4, 6)
    w = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    expected = target[0, 1].pow(2).mean() / 4
    assert reconstruction_loss(pred, target, mask, patch_weights=w).item() == pytest.approx(expected.item(), rel=1e-6)


def test_uniformity_loss_hand_worked():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # orthogonal after normalisation
    assert uniformity_loss(f, tau=0.5).item() == pytest.approx((2 * (1 / 0.5) ** 2) / 4)


@pytest.mark.parametrize("channels", [1, 3])
def test_mae_forward_shapes_and_loss(channels):
    mae = MaskedAutoencoder(tiny_encoder(channels), mask_ratio=0.75, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    out = mae(torch.randn(2, channels, 16, 16))
    assert out.pred.shape == (2, 16, 16 * channels)
    assert out.latent.shape == (2, 1 + 4, 32)
    assert out.mask.sum().item() == 2 * 12
    assert out.loss.ndim == 0 and out.loss > 0


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_mask_ratio_out_of_range(bad):
    with pytest.raises(ValueError, match=r"mask_ratio=.* allowed range is \[0, 1\)"):
        MaskedAutoencoder(tiny_encoder(), mask_ratio=bad)


def test_encoder_rejects_indivisible_image_and_wrong_channels():
    with pytest.raises(ValueError, match="image size 28 is not divisible by patch size 3"):
        ViTEncoder(img_size=28, patch_size=3, embed_dim=32, depth=1, num_heads=2)
    enc = tiny_encoder(in_chans=1)
    with pytest.raises(ValueError, match="expects 1 channels"):
        enc(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_vit_classifier(pooling):
    model = ViTClassifier(tiny_encoder(), num_classes=5, pooling=pooling, head_dropout=0.1)
    assert model(torch.randn(3, 3, 16, 16)).shape == (3, 5)
