"""MLO-MAE hypergradient of the masking network, as pure functions.

Notation: theta = encoder, w = classification head, phi = masking network.
Level I loss  L1(theta, phi) = sum(p * m * e(theta)) / sum(m): per-patch errors e of the
              masked patches (m = 1), weighted by the masking probabilities p = phi(tokens).
Level II loss L2(w, theta)   = CE(head_w(pool(enc_theta(x2))), y2).
Level III     L3(w, theta)   = CE(head_w(pool(enc_theta(x3))), y3).
One-step unrolled (DARTS) approximation of dL3/dphi:
    u     = dL3/dtheta - eta * d2L2/(dtheta dw) . dL3/dw        (direction on theta)
    grad  = -xi * d2L1/(dphi dtheta) . u
Both mixed products are central finite differences: perturb by +-eps*v, eps = alpha/||v||,
with exact weight restoration, fp32 passes with TF32 off and dropout frozen (traps 1-3
of the design handbook). ``schedule="ours"`` merges the two directions into one pretrain
pair and computes the head edge through the head alone plus one encoder backward;
``schedule="original"`` follows the original implementation (two separate paths, each
with its own +- pair; the head edge re-runs the encoder). ``exact_hypergradient`` is the
double-backward reference used by the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.vit import pool

Reduce = Callable[[list[Tensor]], list[Tensor]]
SCHEDULES = ("ours", "original")


def no_reduce(tensors: list[Tensor]) -> list[Tensor]:
    return tensors


@dataclass
class LevelBatches:
    """Data of one hypergradient evaluation.

    x1 (B1, C, H, W), tokens1 (B1, L, D): the masking network's input (held constant),
    masking1: (ids_keep, mask, ids_restore) of the level-I step (reused in every pass);
    x2, y2: level-II batch; x3, y3: level-III batch.
    """

    x1: Tensor
    tokens1: Tensor
    masking1: tuple[Tensor, Tensor, Tensor]
    x2: Tensor
    y2: Tensor
    x3: Tensor
    y3: Tensor


@contextmanager
def perturbed(params: Sequence[nn.Parameter], direction: Sequence[Tensor], scale: float) -> Iterator[None]:
    """Temporarily set ``params += scale * direction``; the originals are copied back exactly."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(d, alpha=scale)
        torch.clear_autocast_cache()
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        torch.clear_autocast_cache()


@contextmanager
def exact_fp32(*modules: nn.Module) -> Iterator[None]:
    """fp32 without autocast or TF32, modules in eval mode (no dropout / drop path)."""
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    modes = [m.training for m in modules]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for m in modules:
        m.eval()
    try:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        for m, mode in zip(modules, modes):
            m.train(mode)


def _grads(loss: Tensor, params: Sequence[Tensor], **kw) -> list[Tensor]:
    out = torch.autograd.grad(loss, params, allow_unused=True, **kw)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(out, params)]


def _norm(vectors: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(sum((v.double() ** 2).sum() for v in vectors))


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def features(mae: MaskedAutoencoder, images: Tensor, pooling: str) -> Tensor:
    """Pooled encoder features of unmasked images, (B, D)."""
    return pool(mae.encoder(images), pooling)


def level3_directions(
    mae: MaskedAutoencoder, head: nn.Module, b: LevelBatches, pooling: str, reduce: Reduce
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """dL3/dtheta, dL3/dw at the current weights (one encoder forward + backward), and L3."""
    enc, hp = _trainable(mae.encoder), _trainable(head)
    loss = F.cross_entropy(head(features(mae, b.x3, pooling)), b.y3)
    g = reduce(_grads(loss, enc + hp))
    return g[: len(enc)], g[len(enc):], loss.detach()


def head_edge(
    mae: MaskedAutoencoder, head: nn.Module, b: LevelBatches, v_w: list[Tensor], eta: float, alpha: float,
    pooling: str, reduce: Reduce, schedule: str, feats2: Tensor | None = None,
) -> list[Tensor]:
    """-eta * d2L2/(dtheta dw) . v_w, a direction on theta."""
    enc, hp = _trainable(mae.encoder), _trainable(head)
    norm = _norm(v_w)
    if norm == 0:
        return [torch.zeros_like(p) for p in enc]
    eps = alpha / norm.item()
    if schedule == "original":  # +- pair through the whole encoder
        grads = []
        for sign in (1, -1):
            with perturbed(hp, v_w, sign * eps):
                loss = F.cross_entropy(head(features(mae, b.x2, pooling)), b.y2)
                grads.append(_grads(loss, enc))
        diff = [(gp - gm) / (2 * eps) for gp, gm in zip(*grads)]
    else:  # +- pair through the head alone, then one backward through the encoder
        f2 = features(mae, b.x2, pooling) if feats2 is None else feats2
        fixed = f2.detach()
        dfeat = []
        for sign in (1, -1):
            with perturbed(hp, v_w, sign * eps):
                f = fixed.clone().requires_grad_(True)
                dfeat.append(torch.autograd.grad(F.cross_entropy(head(f), b.y2), f)[0])
        delta = (dfeat[0] - dfeat[1]) / (2 * eps)  # (B2, D)
        diff = _grads(f2, enc, grad_outputs=delta)
    return reduce([-eta * d for d in diff])


def pretrain_edge(
    mae: MaskedAutoencoder, masknet: nn.Module, b: LevelBatches, u: list[Tensor], xi: float, alpha: float,
    reduce: Reduce,
) -> list[Tensor]:
    """-xi * d2L1/(dphi dtheta) . u via one +- pair of no-grad MAE forwards and one
    backward through the masking network (L1 is linear in the probabilities)."""
    enc, phi = _trainable(mae.encoder), _trainable(masknet)
    norm = _norm(u)
    if norm == 0:
        return [torch.zeros_like(p) for p in phi]
    eps = alpha / norm.item()
    errors = []
    with torch.no_grad():
        for sign in (1, -1):
            with perturbed(enc, u, sign * eps):
                errors.append(mae.patch_errors(b.x1, b.masking1))
    mask = b.masking1[1]
    d = (errors[0] - errors[1]) * mask / mask.sum().clamp(min=1) / (2 * eps)  # (B1, L)
    probs = masknet(b.tokens1)
    return reduce([-xi * g for g in _grads(probs, phi, grad_outputs=d)])


def mlo_hypergradient(
    mae: MaskedAutoencoder,
    head: nn.Module,
    masknet: nn.Module,
    batches: LevelBatches,
    xi: float,
    eta: float,
    alpha: float = 0.01,
    pooling: str = "cls",
    schedule: str = "ours",
    reduce: Reduce = no_reduce,
    feats2: Tensor | None = None,
    info: dict | None = None,
) -> list[Tensor]:
    """Finite-difference hypergradient of L3 with respect to the masking network's parameters.

    Args:
        xi, eta: learning rates of the level-I and level-II steps being differentiated through.
        alpha: finite-difference scale (eps = alpha / ||v||).
        schedule: ``ours`` or ``original`` (see the module docstring).
        reduce: in-place mean over DDP ranks of a list of tensors (identity for one process);
            applied to every direction and to the result so all ranks agree.
        feats2: level-II pooled features with their graph to the encoder, reused by ``ours``.
        info: if given, receives ``level3_loss`` (so callers need no extra forward to log it).
    Returns:
        one gradient per trainable masking-network parameter.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is invalid; allowed: {list(SCHEDULES)}")
    with exact_fp32(mae, head, masknet):
        v_theta, v_w, loss3 = level3_directions(mae, head, batches, pooling, reduce)
        if info is not None:
            info["level3_loss"] = loss3
        u_head = head_edge(mae, head, batches, v_w, eta, alpha, pooling, reduce, schedule, feats2)
        if schedule == "original":  # one pretrain pair per path
            g_direct = pretrain_edge(mae, masknet, batches, v_theta, xi, alpha, reduce)
            g_head = pretrain_edge(mae, masknet, batches, u_head, xi, alpha, reduce)
            return [a + c for a, c in zip(g_direct, g_head)]
        u = [a + c for a, c in zip(v_theta, u_head)]
        return pretrain_edge(mae, masknet, batches, u, xi, alpha, reduce)


def exact_hypergradient(
    mae: MaskedAutoencoder, head: nn.Module, masknet: nn.Module, batches: LevelBatches,
    xi: float, eta: float, pooling: str = "cls",
) -> list[Tensor]:
    """The same quantity with exact second derivatives (double backward, math attention).

    For tests on tiny models, ideally in float64.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b = batches
    enc, hp, phi = _trainable(mae.encoder), _trainable(head), _trainable(masknet)
    with exact_fp32(mae, head, masknet), sdpa_kernel(SDPBackend.MATH):
        v_theta, v_w, _ = level3_directions(mae, head, b, pooling, no_reduce)
        loss2 = F.cross_entropy(head(features(mae, b.x2, pooling)), b.y2)
        g_w = torch.autograd.grad(loss2, hp, create_graph=True)
        hvp = _grads(sum((g * v).sum() for g, v in zip(g_w, v_w)), enc)
        u = [vt - eta * h for vt, h in zip(v_theta, hvp)]
        mask = b.masking1[1]
        loss1 = (masknet(b.tokens1) * mask * mae.patch_errors(b.x1, b.masking1)).sum() / mask.sum()
        g_theta = torch.autograd.grad(loss1, enc, create_graph=True)
        return [-xi * g for g in _grads(sum((g * d.detach()).sum() for g, d in zip(g_theta, u)), phi)]
