"""DerMAE: the class-conditioned diffusion model, synthesis, synthetic training data and
distillation (CPU, tiny models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datamodules import MedMNISTDataModule
from lightning_modules.components.diffusion import (
    build_unet,
    ddim_sample,
    ddpm_scheduler,
    diffusion_loss,
    drop_labels,
)
from lightning_modules.components.losses import distillation_kl
from lightning_modules.diffusion import ClassConditionedDiffusion
from pipeline.cli import train
from synthesis import synthesize as syn
from tests.helpers import compose_cfg, tiny_overrides

TINY_UNET = ["model.unet.block_channels=[8,16,16]", "model.unet.layers_per_block=1", "model.unet.norm_groups=4",
             "model.unet.attention_levels=[false,false,true]", "model.sample_steps=2"]


def _diffusion_run(data_root: Path, out: Path, flag: str = "pneumoniamnist") -> Path:
    cfg = compose_cfg(["model=diffusion", f"data={flag}", *tiny_overrides(data_root), "debug=fdr", *TINY_UNET,
                       "~callbacks.evaluation", "monitor.metric=val/loss", "monitor.mode=min", "test=false"], out)
    return Path(train(cfg)["best_checkpoint"])


@pytest.fixture(scope="module")
def diffusion_ckpt(data_root, tmp_path_factory) -> Path:
    return _diffusion_run(data_root, tmp_path_factory.mktemp("diffusion"))


@pytest.fixture(scope="module")
def synthetic_set(diffusion_ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "synthetic.npz"
    syn.synthesize(diffusion_ckpt, out, steps=2, batch_size=16, progress=False)
    return out


@pytest.mark.slow
def test_a_diffusion_training_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    unet = build_unet(8, 1, 2, block_channels=(8, 16), layers_per_block=1, attention_levels=(False, False),
                      norm_groups=4)
    scheduler = ddpm_scheduler(100)
    x, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.randint(0, 2, (16,))

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same noise and timesteps every time
        return diffusion_loss(unet, scheduler, x, y)[0]

    before = loss().item()
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    for _ in range(10):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.8 * before


@pytest.mark.slow
def test_sampling_has_the_right_shapes_ranges_and_follows_the_class():
    """Two trivially separable classes (dark / bright 8 x 8 images): a classifier fitted on
    the real images recognises the class of most samples."""
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    unet = build_unet(8, 1, 2, block_channels=(8, 16), layers_per_block=1, attention_levels=(False, False),
                      norm_groups=4)
    scheduler = ddpm_scheduler(100)
    y = torch.randint(0, 2, (256,))
    x = (torch.where(y[:, None, None, None] == 1, 0.7, -0.7) + 0.1 * torch.randn(256, 1, 8, 8)).clamp(-1, 1)
    opt = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    for _ in range(120):
        idx = torch.randint(0, 256, (32,))
        loss = diffusion_loss(unet, scheduler, x[idx], drop_labels(y[idx], 2, 0.1))[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    labels = torch.arange(2).repeat_interleave(24)
    samples = ddim_sample(unet.eval(), scheduler, labels, (1, 8, 8), 2, steps=10, guidance=2.0,
                          generator=torch.Generator().manual_seed(0))
    assert samples.shape == (48, 1, 8, 8) and samples.min() >= -1 and samples.max() <= 1
    judge = LogisticRegression().fit(x.flatten(1).numpy(), y.numpy())
    assert judge.score(samples.flatten(1).numpy(), labels.numpy()) >= 0.85
    uint8 = syn.to_uint8(samples)
    assert uint8.shape == (48, 8, 8) and uint8.dtype == np.uint8


def test_label_dropout_uses_the_unconditional_class():
    torch.manual_seed(0)
    dropped = drop_labels(torch.zeros(10_000, dtype=torch.long), num_classes=7, p=0.1)
    assert set(dropped.unique().tolist()) == {0, 7} and abs((dropped == 7).float().mean().item() - 0.1) < 0.01


def test_synthesis_balances_the_classes_and_writes_a_card(diffusion_ckpt, synthetic_set):
    state = torch.load(diffusion_ckpt, map_location="cpu", weights_only=True)
    counts = state["medmae_data"]["train_counts"]
    with np.load(synthetic_set) as f:
        assert set(f.files) == {"train_images", "train_labels"}
        images, labels = f["train_images"], f["train_labels"]
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
    made = np.bincount(labels.reshape(-1), minlength=2)
    np.testing.assert_array_equal(made, max(counts) - np.asarray(counts))  # every class up to the majority
    card = json.loads(synthetic_set.with_suffix(".json").read_text())
    assert card["checkpoint"] == str(diffusion_ckpt.resolve()) and card["steps"] == 2 and card["seed"] == 0
    assert card["counts"] == {str(c): int(n) for c, n in enumerate(made)} and card["data_source"].endswith("pneumoniamnist")
    assert syn.target_counts([5, 9, 2], "counts", {0: 3, 2: 1}) == [3, 0, 1]
    with pytest.raises(ValueError, match="classes are 0..2"):
        syn.target_counts([5, 9, 2], "counts", {4: 3})


def test_synthesis_writes_atomically(diffusion_ckpt, tmp_path, monkeypatch):
    def broken(path, payload):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(syn, "write_bytes", broken)
    with pytest.raises(OSError, match="disk full"):
        syn.synthesize(diffusion_ckpt, tmp_path / "out" / "synthetic.npz", steps=2, progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # neither the set, nor its card, nor a temporary file


def test_a_diffusion_checkpoint_for_other_data_is_refused(diffusion_ckpt, data_root, tmp_path, capsys):
    derma = MedMNISTDataModule(flag="dermamnist", root=str(data_root), download=False)
    derma.setup("fit")
    with pytest.raises(ValueError, match=r"does not fit the data \(data_source .*num_classes 2 vs 7.*channels 1 vs 3"):
        syn.synthesize(diffusion_ckpt, tmp_path / "s.npz", steps=2, progress=False,
                       expected=derma.real_train_identity)
    assert not (tmp_path / "s.npz").exists()
    module = ClassConditionedDiffusion(num_classes=7, img_size=28, in_chans=3, unet={
        "block_channels": [8, 16, 16], "layers_per_block": 1, "norm_groups": 4})
    with pytest.raises(ValueError, match="trained on MedMNIST pneumoniamnist"):
        module.on_load_checkpoint(torch.load(diffusion_ckpt, map_location="cpu", weights_only=True))
    assert syn.main([str(tmp_path / "missing" / "x.ckpt"), "--out", str(tmp_path / "s.npz")]) == 2
    assert "error:" in capsys.readouterr().err


def test_synthetic_images_join_the_training_split_only(data_root, synthetic_set):
    kw = dict(flag="pneumoniamnist", root=str(data_root), download=False, batch_size=16)
    plain = MedMNISTDataModule(**kw)
    mixed = MedMNISTDataModule(**kw, synthetic_train=str(synthetic_set), mlo={"level3_fraction": 0.2})
    for dm in (plain, mixed):
        dm.setup("fit")
    n_syn = len(np.load(synthetic_set)["train_labels"])
    assert len(mixed.train_set) == len(plain.train_set) + n_syn
    for split in ("val_set", "test_set"):  # validation and test are the real ones, untouched
        a, b = getattr(plain, split), getattr(mixed, split)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and b.generated is None
    flags = mixed.train_set.generated
    assert flags.sum() == n_syn and not flags[: len(plain.train_set)].any()
    x, y, flag = mixed.train_set[len(mixed.train_set) - 1]
    assert flag.item() is True and x.shape == (1, 28, 28)
    for level in ("level2", "level3"):  # MLO-MAE's level II / III data: real images only
        assert not flags[mixed.level_indices[level]].any()
    on_device = MedMNISTDataModule(**kw, synthetic_train=str(synthetic_set), on_device=True)
    on_device.setup("fit")
    batch = on_device.on_after_batch_transfer(next(iter(on_device.train_dataloader())), 0)
    assert len(batch) == 3 and batch[2].dtype == torch.bool


def test_synthetic_share_per_class_is_capped_by_hand():
    from datamodules.generated_set import cap_generated_share

    real = np.array([0] * 10 + [1] * 2)
    syn = np.array([1] * 30 + [0] * 3)
    kept = cap_generated_share(real, syn, 0.5, seed=0)  # class 1: at most 1 x 2 = 2; class 0: 3 <= 10, all
    assert np.bincount(syn[kept], minlength=2).tolist() == [3, 2]
    assert np.bincount(syn[cap_generated_share(real, syn, 0.75, 0)], minlength=2).tolist() == [3, 6]  # 3 x 2
    assert len(cap_generated_share(real, syn, 0.98, 0)) == 33  # 49 x 2 = 98 >= 30: nothing dropped
    assert not np.array_equal(cap_generated_share(real, syn, 0.5, 0), cap_generated_share(real, syn, 0.5, 1))


def test_synthetic_max_ratio_caps_the_share_in_the_training_split(data_root, synthetic_set):
    kw = dict(flag="pneumoniamnist", root=str(data_root), download=False, batch_size=16,
              synthetic_train=str(synthetic_set))
    full, capped = MedMNISTDataModule(**kw), MedMNISTDataModule(**kw, synthetic_max_ratio=0.2)
    for dm in (full, capped):
        dm.setup("fit")
    labels, flags = capped.train_labels.reshape(-1), np.asarray(capped.train_set.generated)
    for c in np.unique(labels[flags]):
        share = (flags & (labels == c)).sum() / (labels == c).sum()
        assert share <= 0.2 + 1e-9
    assert flags.sum() < np.asarray(full.train_set.generated).sum()
    with pytest.raises(ValueError, match=r"data.synthetic_max_ratio=1.5 is invalid"):
        MedMNISTDataModule(**kw, synthetic_max_ratio=1.5)


def test_a_synthetic_set_for_another_dataset_is_refused(data_root, synthetic_set, tmp_path):
    dm = MedMNISTDataModule(flag="dermamnist", root=str(data_root), download=False, synthetic_train=str(synthetic_set))
    with pytest.raises(ValueError, match=r"was made for another dataset \(data_source 'MedMNIST pneumoniamnist' vs "
                                         r"'MedMNIST dermamnist', num_classes 2 vs 7, channels 1 vs 3"):
        dm.setup("fit")
    renamed = tmp_path / "other.npz"
    renamed.write_bytes(synthetic_set.read_bytes())  # no card next to it
    dm = MedMNISTDataModule(flag="pneumoniamnist", root=str(data_root), download=False, synthetic_train=str(renamed))
    with pytest.raises(FileNotFoundError, match="other.json does not exist"):
        dm.setup("fit")
    # the same dataset, but another real training set (a label fraction): the generator saw labels this run hides
    dm = MedMNISTDataModule(flag="pneumoniamnist", root=str(data_root), download=False, label_fraction=0.5,
                            synthetic_train=str(synthetic_set))
    with pytest.raises(ValueError, match="train_fingerprint: the generator saw another real training set"):
        dm.setup("fit")
    # a replaced .npz next to the original card
    card = json.loads(synthetic_set.with_suffix(".json").read_text())
    (tmp_path / "replaced.json").write_text(json.dumps(card))
    with np.load(synthetic_set) as f:
        np.savez(tmp_path / "replaced.npz", train_images=f["train_images"][::-1], train_labels=f["train_labels"][::-1])
    dm = MedMNISTDataModule(flag="pneumoniamnist", root=str(data_root), download=False,
                            synthetic_train=str(tmp_path / "replaced.npz"))
    with pytest.raises(ValueError, match="sha256 differs from its card's"):
        dm.setup("fit")


def test_distillation_loss_matches_a_hand_computation():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    t = torch.tensor([[1.0, 1.0, 0.0], [-2.0, 0.0, 2.0]])
    temp = 2.0

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p, q = softmax(t.numpy() / temp), softmax(s.numpy() / temp)
    by_hand = temp**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))
    assert distillation_kl(s, t, temp).item() == pytest.approx(by_hand, rel=1e-6)
    assert distillation_kl(t, t, temp).item() == pytest.approx(0.0, abs=1e-7)
    # the gradient reaches the student only
    s_ = s.clone().requires_grad_(True)
    (0.5 * distillation_kl(s_, t, temp) + 0.5 * F.cross_entropy(s_, torch.tensor([0, 2]))).backward()
    assert s_.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def derma_classifier(data_root, tmp_path_factory) -> str:
    """A quickstart CNN checkpoint (synthetic DermaMNIST: 7 classes, RGB, normalization half)."""
    cfg = compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "debug=fdr"],
                      tmp_path_factory.mktemp("classifier"))
    return train(cfg)["best_checkpoint"]


def test_the_perceptual_term_uses_a_frozen_classifier_and_trains_the_unet(derma_classifier):
    torch.manual_seed(0)
    model = ClassConditionedDiffusion(num_classes=7, img_size=28, in_chans=3, perceptual_weight=1.0,
                                      perceptual_net=derma_classifier,
                                      unet={"block_channels": [8, 16, 16], "layers_per_block": 1, "norm_groups": 4})
    features = model._perceptual[0]
    assert not any(p.requires_grad for p in features.parameters())
    model.train()
    assert not features.training  # frozen in eval mode whatever Lightning toggles
    x, y = torch.rand(4, 3, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 3])
    _, noisy, eps, t = diffusion_loss(model.unet, model.scheduler, x, y)
    term = model.perceptual_term(x, noisy, eps, t)
    assert term.item() > 0 and torch.isfinite(term)
    term.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.unet.parameters())
    with pytest.raises(ValueError, match="the diffusion model needs normalization=half and 1 channels"):
        ClassConditionedDiffusion(num_classes=7, img_size=28, in_chans=1, perceptual_weight=1.0,
                                  perceptual_net=derma_classifier)


def test_a_teacher_with_another_class_count_is_refused(data_root, derma_classifier, tmp_path):
    teacher = derma_classifier  # synthetic DermaMNIST: 7 classes
    student = compose_cfg(["model=distillation", "data=pneumoniamnist", *tiny_overrides(data_root), "debug=fdr",
                           f"model.teacher_ckpt={teacher}", "encoder.patch_size=4"], tmp_path / "student")
    with pytest.raises(Exception, match="teacher_ckpt=.* predicts 7 classes but the data has 2; distil on the dataset"):
        train(student)


def test_latent_mode_with_a_tiny_autoencoder(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=4, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    model = ClassConditionedDiffusion(num_classes=3, img_size=16, in_chans=1, latent_autoencoder=str(tmp_path / "vae"),
                                      unet={"block_channels": [8, 16], "layers_per_block": 1, "norm_groups": 4,
                                            "attention_levels": [False, False]})
    assert model.latent_shape() == (4, 8, 8) and model.unet.config.in_channels == 4
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    z = model.encode(x)
    assert z.shape == (4, 4, 8, 8)
    loss = diffusion_loss(model.unet, model.scheduler, z, torch.tensor([0, 1, 2, 3]))[0]
    assert torch.isfinite(loss)
    images = model.sample(torch.tensor([0, 2]), steps=2)
    assert images.shape == (2, 1, 16, 16) and images.abs().max() <= 1
    with pytest.raises(FileNotFoundError, match="model.latent_autoencoder='no/such/vae' could not be loaded"):
        ClassConditionedDiffusion(num_classes=3, img_size=16, in_chans=1, latent_autoencoder="no/such/vae")


def test_ema_warms_up_then_follows_the_weights_at_its_decay():
    from torch.optim.swa_utils import AveragedModel

    from lightning_modules.diffusion import ema_decay_at, warmup_ema

    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(10**6, 0.999) == 0.999
    net = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = AveragedModel(net, multi_avg_fn=warmup_ema(0.9), use_buffers=True)
    ema.update_parameters(net)  # the first update copies: 0
    expected = 0.0
    for n in range(1, 40):
        net.weight.data.fill_(float(n))
        ema.update_parameters(net)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * n
    assert ema.module.weight[0, 0].item() == pytest.approx(expected, rel=1e-6)


def test_training_on_real_plus_synthetic_reports_each_kind_separately(data_root, synthetic_set, tmp_path):
    """One batch holds the whole training split (120 real + the generated images): the epoch's
    accuracy is the count-weighted mean of the accuracies on each kind (the default callbacks
    log them: callbacks.accuracy_by_source)."""
    generated = len(np.load(synthetic_set)["train_labels"])
    cfg = compose_cfg(["experiment=cnn_derma", "data=pneumoniamnist", *tiny_overrides(data_root),
                       "trainer.max_epochs=1", "data.batch_size=1024", f"data.synthetic_train={synthetic_set}"],
                      tmp_path)
    metrics = train(cfg)
    real, synthetic = metrics["train/acc_real"], metrics["train/acc_synthetic"]
    assert metrics["train/acc"] == pytest.approx((120 * real + generated * synthetic) / (120 + generated), abs=1e-6)
    assert round(real * 120) == pytest.approx(real * 120, abs=1e-4)  # a count of correct real images


def test_accuracy_by_source_counts_each_kind_of_image_over_batches_by_hand():
    from types import SimpleNamespace

    from callbacks.accuracy_by_source import AccuracyBySource

    logged = {}
    module = SimpleNamespace(log=lambda name, value, **kw: logged.__setitem__(name, float(value)))
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce=lambda t, reduce_op: 2 * t))  # 2 ranks, same counts
    callback = AccuracyBySource()
    callback.on_train_epoch_start(trainer, module)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    batches = [(None, torch.tensor([0, 0, 0, 1]), torch.tensor([False, False, True, True])),  # real 1 / 2, gen. 2 / 2
               (None, torch.tensor([1, 0, 0, 1]), torch.tensor([False, True, True, True]))]  # real 0 / 1, gen. 2 / 3
    for batch in batches:
        callback.on_train_batch_end(trainer, module, {"loss": torch.tensor(0.0), "probs": probs}, batch, 0)
    callback.on_train_epoch_end(trainer, module)
    assert logged == {"train/acc_real": pytest.approx(1 / 3), "train/acc_synthetic": pytest.approx(4 / 5)}
    logged.clear()  # a split without generated images (two-element batches): nothing is logged
    callback.on_train_epoch_start(trainer, module)
    callback.on_train_batch_end(trainer, module, {"loss": torch.tensor(0.0), "probs": probs}, batches[0][:2], 0)
    callback.on_train_epoch_end(trainer, module)
    assert logged == {}


def test_debug_fdr_adds_no_dermae_keys_and_shortens_synthesis_through_fast_dev_run(data_root, diffusion_ckpt,
                                                                                  tmp_path):
    """debug=fdr sets only what every run has; the synthesis stage reads trainer.fast_dev_run
    (2 DDIM steps per image, as its card records) like Lightning does for training."""
    from omegaconf import OmegaConf

    plain = compose_cfg(["experiment=cnn_derma", "debug=fdr"], tmp_path / "plain")
    assert "synthesis" not in plain and "export" not in plain
    cfg = compose_cfg(["model=diffusion", "data=pneumoniamnist", *tiny_overrides(data_root), "debug=fdr"],
                      tmp_path / "stage")
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = str(tmp_path / "stage")
    cfg.synthesis = {"ckpt": str(diffusion_ckpt), "steps": 50, "batch_size": 64}
    result = syn.run_synthesis_stage(cfg)
    card = json.loads(Path(result["synthetic_train"]).with_suffix(".json").read_text())
    assert card["steps"] == syn.FAST_DEV_RUN_STEPS == 2


def test_diffusion_options_are_typed_groups_checked_when_built_with_the_flat_keys():
    """model.* keys stay flat (as configs and checkpoints hold them); each lands in its group and
    a bad value or an unknown key is one error naming the key."""
    tiny = {"block_channels": [8, 16], "layers_per_block": 1, "attention_levels": [False, False], "norm_groups": 4}
    model = ClassConditionedDiffusion(num_classes=2, img_size=8, in_chans=1, unet=tiny, cond_dropout=0.2,
                                      sample_steps=7, guidance_scale=1.5, ema_decay=0.99, beta_schedule="scaled_linear")
    assert (model.options.noise.cond_dropout, model.options.sampling.sample_steps) == (0.2, 7)
    assert model.options.optim.ema_decay == 0.99 and model.scheduler.config.beta_schedule == "scaled_linear"
    assert model.hparams.sample_steps == 7  # saved flat: a checkpoint rebuilds the same groups
    for bad, named in [({"cond_dropout": 1.0}, r"model\.cond_dropout=1\.0 is invalid"),
                       ({"beta_schedule": "cosine"}, r"model\.beta_schedule='cosine' is invalid"),
                       ({"sample_steps": 0}, r"model\.sample_steps=0 is invalid"),
                       ({"perceptual_weight": 1.0}, r"model\.perceptual_weight > 0 needs model\.perceptual_net"),
                       ({"samplesteps": 5}, r"model\.samplesteps is not an option of ClassConditionedDiffusion")]:
        with pytest.raises(ValueError, match=named):
            ClassConditionedDiffusion(num_classes=2, img_size=8, in_chans=1, unet=tiny, **bad)
