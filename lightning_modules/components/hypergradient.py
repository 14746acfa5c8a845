"""MLO-MAE (Guo et al., TMLR 2024) hypergradient of the masking network, as pure functions.

Notation: theta = encoder, w = classification head, phi = masking network.
  L1(theta, phi) = sum(W(p) * m * e(theta)) / sum(m): per-patch errors e of the masked
                   patches (m = 1), weighted by W(p), p = phi(tokens) (see ``masking.patch_weights``).
  L2(w, theta)   = CE(head_w(pool(enc_theta(x2))), y2).
  L3(w, theta)   = CE(head_w(pool(enc_theta(x3))), y3).
  v_theta = dL3/dtheta, v_w = dL3/dw, H1 = d2L1/(dphi dtheta), H2 = d2L2/(dtheta dw).

Two scalings of the same two paths (direct: mask -> pretrain; head: mask -> finetune -> pretrain):
  official  g = -H1 v_theta + H1 H2 v_w = -H1 (v_theta - H2 v_w)
            (MLO-MAE's official code: the ``darts`` hypergradient of Betty (Choe et al.,
            ICLR 2023) on every edge, unit weights);
  unrolled  g = -xi H1 (v_theta - eta H2 v_w)
            (one-step unrolled SGD of level I with lr xi and level II with lr eta, as in DARTS
            (Liu, Simonyan & Yang, ICLR 2019)).
Both mixed products are central finite differences: perturb by +-eps*v, eps = alpha/||v||,
with exact weight restoration, fp32 passes with TF32 off and dropout frozen (see docs/mlo-mae.md,
hypergradient section).

Schedules (same estimate up to finite-difference error):
  ``ours``: the head edge perturbs the head alone on fixed level-II features, then one
  backward through the encoder (reusing the level-II forward when it was exact fp32); the
  two theta directions are merged (H1 is linear) into one pretrain +- pair.
  ``original``: the original implementation's passes: the head edge re-runs the encoder at
  both perturbed heads, and each path gets its own pretrain +- pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.masking import patch_weights
from lightning_modules.components.speed import eager
from lightning_modules.components.vit import pool

Reduce = Callable[[list[Tensor]], list[Tensor]]
SCHEDULES = ("ours", "original")
SCALINGS = ("official", "unrolled")


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
    """Temporarily set ``params += scale * direction``; the originals are copied back exactly.

    Writes go through ``.data`` so that they do not bump the parameters' autograd version:
    a graph built before (the level-II features that ``ours`` reuses across level-III steps)
    stays usable, which is sound because the values are restored bit for bit.
    """
    saved = [p.detach().clone() for p in params]
    try:
        for p, d in zip(params, direction):
            p.data.add_(d, alpha=scale)
        torch.clear_autocast_cache()
        yield
    finally:
        for p, s in zip(params, saved):
            p.data.copy_(s)
        torch.clear_autocast_cache()


@contextmanager
def no_tf32() -> Iterator[None]:
    """TF32 off for CUDA matmuls and cuDNN convolutions, restored afterwards. Uses the
    ``fp32_precision`` API where torch has it (reading the legacy flags raises once that API
    has set TF32), else the legacy ``allow_tf32`` flags."""
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    new_api = hasattr(m, "fp32_precision")
    saved = (m.fp32_precision, c.fp32_precision) if new_api else (m.allow_tf32, c.allow_tf32)
    if new_api:
        m.fp32_precision = c.fp32_precision = "ieee"
    else:
        m.allow_tf32 = c.allow_tf32 = False
    try:
        yield
    finally:
        if new_api:
            m.fp32_precision, c.fp32_precision = saved
        else:
            m.allow_tf32, c.allow_tf32 = saved


def tf32_enabled() -> bool:
    """Whether CUDA matmuls or cuDNN convolutions may use TF32 now (either API)."""
    on = []
    for backend in (torch.backends.cuda.matmul, torch.backends.cudnn):
        precision = getattr(backend, "fp32_precision", "none")
        on.append(backend.allow_tf32 if precision == "none" else precision == "tf32")
    return any(on)


@contextmanager
def exact_fp32(*modules: nn.Module) -> Iterator[None]:
    """fp32 without autocast or TF32, modules in eval mode (no dropout / drop path), compiled
    modules run eagerly (``model.compile`` never changes the finite differences)."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with no_tf32(), eager(), torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def forward_is_exact(module: nn.Module, device_type: str) -> bool:
    """True when a forward of ``module`` run now equals its fp32 eval-mode forward: no
    autocast, no TF32 on CUDA, no active dropout or drop path, not compiled (a compiled
    graph's backward must not run inside the finite differences). Then ``ours`` may reuse it."""
    if torch.is_autocast_enabled(device_type) or (device_type == "cuda" and tf32_enabled()):
        return False
    if any(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules()):
        return False
    for m in module.modules():
        p = getattr(m, "p", None) if isinstance(m, nn.Dropout) else getattr(m, "drop_prob", None)
        if m.training and p:
            return False
    return True


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
    """v_theta = dL3/dtheta, v_w = dL3/dw at the current weights (one encoder forward +
    backward), and L3."""
    enc, hp = _trainable(mae.encoder), _trainable(head)
    loss = F.cross_entropy(head(features(mae, b.x3, pooling)), b.y3)
    g = reduce(_grads(loss, enc + hp))
    return g[: len(enc)], g[len(enc):], loss.detach()


def head_edge(
    mae: MaskedAutoencoder, head: nn.Module, b: LevelBatches, v_w: list[Tensor], alpha: float,
    pooling: str, reduce: Reduce, schedule: str, feats2: Tensor | None = None,
) -> list[Tensor]:
    """-H2 v_w = -d2L2/(dtheta dw) . v_w, a direction on theta.

    ``feats2``: level-II pooled features with their graph to the encoder (``ours`` only; an
    exact fp32 eval-mode forward). Its graph is kept, so several level-III steps can reuse it.
    """
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
        diff = _grads(f2, enc, grad_outputs=delta, retain_graph=feats2 is not None)
    return reduce([-d for d in diff])


def pretrain_edge(
    mae: MaskedAutoencoder, masknet: nn.Module, b: LevelBatches, u: list[Tensor], alpha: float,
    weighting: str, reduce: Reduce, input_grad: bool = False,
) -> list[Tensor]:
    """-H1 u, with H1 = d2L1/(dphi dtheta).

    Detached masking-net input (default): -d/dphi [sum(W(p(phi)) * m * D_u e) / sum(m)], where
    D_u e = (e(theta + eps u) - e(theta - eps u)) / (2 eps) is the change of the per-patch errors
    along u (one +- pair of no-grad MAE forwards), then one backward through the masking net.
    ``input_grad`` (MLO-MAE's official code's input, tokens = the encoder's patch embedding with its
    gradient): p depends on theta too, so the full dL1/dphi is differenced at both points.
    """
    enc, phi = _trainable(mae.encoder), _trainable(masknet)
    norm = _norm(u)
    if norm == 0:
        return [torch.zeros_like(p) for p in phi]
    eps = alpha / norm.item()
    mask = b.masking1[1]

    def level1_loss(probs: Tensor, errors: Tensor) -> Tensor:
        return (patch_weights(probs, mask, weighting) * mask * errors).sum() / mask.sum().clamp(min=1)

    if input_grad:
        grads = []
        for sign in (1, -1):
            with perturbed(enc, u, sign * eps):
                with torch.no_grad():
                    errors, tokens = mae.patch_errors(b.x1, b.masking1), mae.encoder.embed(b.x1)
                grads.append(_grads(level1_loss(masknet(tokens), errors), phi))
        return reduce([-(gp - gm) / (2 * eps) for gp, gm in zip(*grads)])
    errors = []
    with torch.no_grad():
        for sign in (1, -1):
            with perturbed(enc, u, sign * eps):
                errors.append(mae.patch_errors(b.x1, b.masking1))
    d_errors = (errors[0] - errors[1]) / (2 * eps)  # (B1, L)
    return reduce([-g for g in _grads(level1_loss(masknet(b.tokens1), d_errors), phi)])


def mlo_hypergradient(
    mae: MaskedAutoencoder,
    head: nn.Module,
    masknet: nn.Module,
    batches: LevelBatches,
    scaling: str = "official",
    xi: float = 1.0,
    eta: float = 1.0,
    alpha: float = 0.01,
    pooling: str = "cls",
    schedule: str = "ours",
    weighting: str = "probability",
    input_grad: bool = False,
    reduce: Reduce = no_reduce,
    feats2: Tensor | None = None,
    info: dict | None = None,
) -> list[Tensor]:
    """Finite-difference hypergradient of L3 with respect to the masking network's parameters.

    Args:
        scaling: ``official`` (unit weights; ``xi`` and ``eta`` are ignored) or ``unrolled``.
        xi, eta: learning rates of the level-I and level-II steps (``unrolled`` only).
        alpha: finite-difference scale (eps = alpha / ||v||).
        schedule: ``ours`` or ``original`` (see the module docstring).
        weighting: how probabilities weight the level-I loss (``masking.patch_weights``).
        input_grad: the masking net reads the encoder's patch embedding with its gradient (the
            official code); default: detached tokens ``batches.tokens1``.
        reduce: in-place mean over DDP ranks of a list of tensors (identity for one process);
            applied to every direction and to the result so all ranks agree.
        feats2: level-II pooled features with their graph to the encoder, reused by ``ours``
            (pass only an exact fp32 eval-mode forward, see ``forward_is_exact``).
        info: if given, receives ``level3_loss`` and the norms ``direct`` = ||xi v_theta|| and
            ``head`` = ||xi eta H2 v_w|| of the two paths' theta directions (before the shared
            linear map -H1), and ``total`` = ||g||.
    Returns:
        one gradient per trainable masking-network parameter.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is invalid; allowed: {list(SCHEDULES)}")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling={scaling!r} is invalid; allowed: {list(SCALINGS)}")
    if scaling == "official":
        xi, eta = 1.0, 1.0
    with exact_fp32(mae, head, masknet):
        v_theta, v_w, loss3 = level3_directions(mae, head, batches, pooling, reduce)
        u_head = [eta * d for d in head_edge(mae, head, batches, v_w, alpha, pooling, reduce, schedule, feats2)]
        if schedule == "original":  # one pretrain pair per path
            g_direct = pretrain_edge(mae, masknet, batches, v_theta, alpha, weighting, reduce, input_grad)
            g_head = pretrain_edge(mae, masknet, batches, u_head, alpha, weighting, reduce, input_grad)
            grads = [xi * (a + c) for a, c in zip(g_direct, g_head)]
        else:
            u = [a + c for a, c in zip(v_theta, u_head)]
            grads = [xi * g for g in pretrain_edge(mae, masknet, batches, u, alpha, weighting, reduce, input_grad)]
    if info is not None:
        info.update(level3_loss=loss3, direct=xi * _norm(v_theta), head=xi * _norm(u_head), total=_norm(grads))
    return grads
