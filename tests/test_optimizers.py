"""One optimiser convention: every model's optimiser and schedule are partials from its config
(``model.optimizer``, ``model.scheduler``), the rates are ``model.lr`` / ``model.weight_decay``
(every experiment's configs: ``test_train.test_one_optimiser_convention_for_every_model``)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from hydra.utils import instantiate

from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.optim import cosine_with_warmup
from lightning_modules.components.vit import ViTEncoder
from lightning_modules.mae import MAEPretrain
from lightning_modules.mlo_mae import MLOMAE
from pipeline.stage_config import compose_stage
from tests.helpers import TINY_VIT, compose_cfg, tiny_overrides


def _mae(seed=0) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    return MaskedAutoencoder(ViTEncoder(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=1, num_heads=2),
                             0.75, decoder_dim=8, decoder_depth=1, decoder_heads=2)


def test_mae_and_each_mlo_level_build_the_configured_optimiser_and_schedule():
    sgd = partial(torch.optim.SGD, momentum=0.9)
    step = partial(torch.optim.lr_scheduler.StepLR, step_size=3, gamma=0.5)
    mae = MAEPretrain(_mae(), num_classes=2, task="binary-class", lr=0.1, weight_decay=0.01, optimizer=sgd,
                      scheduler=step)
    opts, scheds = mae.configure_optimizers()
    assert isinstance(opts[0], torch.optim.SGD) and opts[0].defaults["momentum"] == 0.9
    assert {g["lr"] for g in opts[0].param_groups} == {0.1} and {g["weight_decay"] for g in opts[0].param_groups} == {0.01, 0.0}
    assert isinstance(opts[1], torch.optim.AdamW)  # the online probe keeps its own (a monitor, not the method)
    assert len(scheds) == 1 and isinstance(scheds[0], torch.optim.lr_scheduler.StepLR) and scheds[0].optimizer is opts[0]
    mlo = MLOMAE(_mae(), num_classes=2, task="binary-class", lr=0.1, levels={"lr_head": 0.2, "lr_mask": 0.3},
                 optimizer=sgd, scheduler=step, masking={"net": "patch_scorer"})
    opts, scheds = mlo.configure_optimizers()
    assert [type(o) for o in opts] == [torch.optim.SGD] * 3
    assert [o.param_groups[0]["lr"] for o in opts] == [0.1, 0.2, 0.3]
    assert [s.optimizer for s in scheds] == opts
    no_schedule = MLOMAE(_mae(), num_classes=2, task="binary-class", masking={"net": "patch_scorer"})
    constant = no_schedule.configure_optimizers()  # constant rates: the optimisers only, no schedulers
    assert [type(o) for o in constant] == [torch.optim.AdamW] * 3
    assert [o.param_groups[0]["lr"] for o in constant] == [no_schedule.hparams.lr, 1e-3, 1e-3]


def test_an_optimiser_partial_that_sets_the_rates_is_refused():
    with pytest.raises(ValueError, match=r"model.optimizer.lr is not read: the rates are model.lr"):
        MAEPretrain(_mae(), num_classes=2, task="binary-class", optimizer=partial(torch.optim.AdamW, lr=1e-3))
    with pytest.raises(ValueError, match=r"model.optimizer.weight_decay is not read"):
        MLOMAE(_mae(), num_classes=2, task="binary-class", optimizer=partial(torch.optim.SGD, weight_decay=0.1))


def test_cosine_with_warmup_values_and_a_warmup_longer_than_the_run():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, warmup_steps=2, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx(expected)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, warmup_steps=5, total_steps=3)  # shortened to 2: the peak is reached
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="finite trainer.max_epochs"):
        cosine_with_warmup(opt, 0, None)


def test_a_configured_optimiser_reaches_the_pretraining_stage(data_root, tmp_path):
    cfg = compose_cfg(["experiment=mae_small", *tiny_overrides(data_root), *TINY_VIT,
                       "stages.pretrain.model.optimizer._target_=torch.optim.SGD",
                       "~stages.pretrain.model.optimizer.betas", "+stages.pretrain.model.optimizer.momentum=0.5",
                       "stages.pretrain.model.scheduler=null"], tmp_path)
    model = instantiate(compose_stage(cfg, "pretrain", tmp_path).model, _convert_="all")
    opts = model.configure_optimizers()[0]
    assert isinstance(opts[0], torch.optim.SGD) and opts[0].defaults["momentum"] == 0.5
