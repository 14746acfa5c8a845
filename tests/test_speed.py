"""GPU speed options, checked on CPU: compile, eager finite differences, fused optimisers,
channels-last CNNs, SDPA attention and the GPU config defaults."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from lightning_modules.classifier import Classifier
from lightning_modules.components.cnn import DermaCNN
from lightning_modules.components.hypergradient import (
    LevelBatches,
    forward_is_exact,
    mlo_hypergradient,
)
from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.masking import build_masking_net
from lightning_modules.components.patches import masking_from_scores
from lightning_modules.components.speed import (
    compile_networks,
    compile_options,
    eager,
    fused_kwargs,
    uses_sdpa,
)
from lightning_modules.components.vit import ClassificationHead, ViTEncoder
from pipeline.cli import train
from tests.helpers import assert_reported_test_metrics, compose_cfg, tiny_overrides


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them as traced, with
    every floating output shifted by ``shift``: compiled and eager calls are told apart."""

    def __init__(self, shift: float = 0.0) -> None:
        self.graphs, self.shift = 0, shift

    def __call__(self, gm, example_inputs):
        self.graphs += 1

        def run(*args):
            out = gm.forward(*args)
            move = lambda t: t + self.shift if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
            return type(out)(move(t) for t in out) if isinstance(out, (tuple, list)) else move(out)
        return run


def test_compile_options_are_checked():
    assert compile_options(False) is None and compile_options(None) is None and compile_options(True) == {}
    assert compile_options({"mode": "max-autotune"}) == {"mode": "max-autotune"}
    with pytest.raises(ValueError, match=r"model.compile has unknown keys \['modee'\]"):
        compile_options({"modee": "default"})
    with pytest.raises(ValueError, match="model.compile='yes' is invalid"):
        compile_options("yes")


def test_eager_stance_bypasses_compiled_networks():
    torch._dynamo.reset()
    backend = CountingBackend()
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    compile_networks([net], {"backend": backend})
    x = torch.randn(2, 4)
    with eager():
        net(x)
    assert backend.graphs == 0
    out = net(x)
    assert backend.graphs == 1 and torch.allclose(out, net[1](net[0](x)))


def _tiny_mlo(seed: int = 0):
    torch.manual_seed(seed)
    enc = ViTEncoder(img_size=8, patch_size=2, in_chans=1, embed_dim=8, depth=1, num_heads=2)
    mae = MaskedAutoencoder(enc, 0.75, decoder_dim=8, decoder_depth=1, decoder_heads=2)
    head = ClassificationHead(8, 3, 0.0)
    masknet = build_masking_net("mlp", enc.num_patches, 8, 16, 1.0, "none")
    return mae, head, masknet


@pytest.mark.slow
def test_compiled_mlo_networks_give_the_eager_hypergradient():
    """The finite-difference passes run eagerly in fp32 even when the networks are compiled (the
    compiled calls are shifted by 1e-3, so any compiled call inside them changes the result),
    and a compiled level-II forward is never reused inside them."""
    torch.manual_seed(1)
    x1, x2, x3 = (torch.randn(4, 1, 8, 8) for _ in range(3))
    y2, y3 = torch.randint(0, 3, (4,)), torch.randint(0, 3, (4,))
    grads = []
    for compiled in (False, True):
        torch._dynamo.reset()
        mae, head, masknet = _tiny_mlo()
        backend = CountingBackend(shift=1e-3)
        if compiled:
            compile_networks([mae.encoder, mae.decoder, head, masknet], {"backend": backend})
            assert not forward_is_exact(mae.encoder, "cpu")
        tokens = mae.encoder.embed(x1).detach()
        masking = masking_from_scores(masknet(tokens).detach(), mae.mask_ratio)
        g = mlo_hypergradient(mae, head, masknet, LevelBatches(x1, tokens, masking, x2, y2, x3, y3),
                              scaling="official", xi=1e-3, eta=1e-3, alpha=0.01, pooling="cls", schedule="ours",
                              weighting="probability", input_grad=False, feats2=None, info={})
        grads.append(g)
        if compiled:
            assert backend.graphs >= 1  # the masking net's forward above went through the compiler
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fused_optimiser_only_for_cuda_parameters():
    cpu = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    cuda_like = [{"params": [SimpleNamespace(is_cuda=True, is_floating_point=lambda: True)]}]
    adamw = functools.partial(torch.optim.AdamW, betas=(0.9, 0.95))
    assert fused_kwargs(adamw, cpu) == {}
    assert fused_kwargs(adamw, cuda_like) == {"fused": True}
    assert fused_kwargs(torch.optim.SGD, cuda_like) == {"fused": True}
    assert fused_kwargs(functools.partial(torch.optim.AdamW, fused=False), cuda_like) == {}  # the user's choice
    assert fused_kwargs(torch.optim.LBFGS, cuda_like) == {}  # takes no `fused`


def test_vit_attention_runs_through_sdpa():
    enc = ViTEncoder(img_size=8, patch_size=2, in_chans=1, embed_dim=8, depth=2, num_heads=2)
    assert uses_sdpa(enc)
    enc.blocks[0].attn.fused_attn = False
    assert not uses_sdpa(enc)


def test_channels_last_classifier_matches_the_default_layout():
    torch.manual_seed(0)
    nets = [DermaCNN(in_chans=3, num_classes=7, img_size=28) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opt = functools.partial(torch.optim.SGD)
    plain = Classifier(nets[0], 7, "multi-class", opt, lr=0.01).eval()
    nhwc = Classifier(nets[1], 7, "multi-class", opt, lr=0.01, channels_last=True).eval()
    conv = next(m for m in nhwc.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 28, 28)
    torch.testing.assert_close(nhwc(x), plain(x), rtol=1e-5, atol=1e-5)


def test_gpu_trainer_turns_on_tf32_and_channels_last(tmp_path):
    gpu = compose_cfg(["experiment=cnn_derma", "trainer=gpu"], tmp_path)
    assert gpu.float32_matmul_precision == "high" and gpu.model.channels_last is True
    cpu = compose_cfg(["experiment=cnn_derma"], tmp_path)
    assert cpu.float32_matmul_precision == "highest" and cpu.model.channels_last is False


@pytest.mark.slow
def test_compiled_classifier_trains_like_the_eager_one(data_root, tmp_path):
    from torch._dynamo.utils import counters

    results, graphs = {}, {}
    for compiled in ("false", "{backend: aot_eager}"):
        torch._dynamo.reset()
        counters.clear()
        cfg = compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "debug=fdr",
                           f"model.compile={compiled}"], tmp_path / compiled.strip("{}:_ "))
        results[compiled] = train(cfg)
        graphs[compiled] = counters["stats"]["unique_graphs"]
    assert graphs == {"false": 0, "{backend: aot_eager}": graphs["{backend: aot_eager}"]} and graphs[compiled] > 0
    for key in ("test/acc", "test/loss", "val/loss"):
        assert results["{backend: aot_eager}"][key] == pytest.approx(results["false"][key], abs=1e-5), key


@pytest.mark.slow
def test_inductor_compiled_mae_pipeline_runs(data_root, tmp_path):
    """The real compiler (inductor, C++ on CPU) on the MAE pretrain -> fine-tune pipeline."""
    cfg = compose_cfg(["experiment=mae_small", "debug=fdr", *tiny_overrides(data_root), "data.batch_size=8",
                       "++stages.finetune.data.batch_size=8", "encoder.depth=1", "encoder.embed_dim=32",
                       "encoder.num_heads=2", "encoder.patch_size=4", "++model.compile=true"],
                      tmp_path)
    metrics = train(cfg)
    assert_reported_test_metrics(tmp_path / "finetune", metrics)
