"""Finite-difference MLO-MAE hypergradient against independent fp64 references.

The references below use only the models' forwards and autograd (no helper of
``components/hypergradient.py``): ``official_reference`` builds -H1 v_theta + H1 H2 v_w from
exact Hessian-vector products; ``unrolled_reference`` takes one SGD step of level I and of
level II explicitly (create_graph) and differentiates the level-III loss with respect to phi.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_modules.components.hypergradient import LevelBatches, mlo_hypergradient, perturbed
from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.masking import MLPMaskingNet, PatchScorer
from lightning_modules.components.patches import masking_from_scores
from lightning_modules.components.vit import ClassificationHead, ViTEncoder
from tests.helpers import global_batch, sgd_optimizers, tiny_module


def tiny_setup(dtype=torch.float32, masknet="mlp", seed=0):
    torch.manual_seed(seed)
    enc = ViTEncoder(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2)
    mae = MaskedAutoencoder(enc, 0.75, decoder_dim=8, decoder_depth=1, decoder_heads=2)
    head = ClassificationHead(16, 3, dropout=0.3)
    kind, _, norm = masknet.partition("-")
    norm = norm or "none"
    net = MLPMaskingNet(enc.num_patches, 16, hidden=8, input_norm=norm) if kind == "mlp" else \
        PatchScorer(16, hidden=8, input_norm=norm)
    for m in (mae, head, net):
        m.to(dtype)
    x1 = torch.randn(4, 1, 8, 8, dtype=dtype)
    tokens = enc.embed(x1).detach()
    masking = masking_from_scores(net(tokens).detach(), 0.75)
    b = LevelBatches(x1, tokens, masking, torch.randn(5, 1, 8, 8, dtype=dtype), torch.randint(0, 3, (5,)),
                     torch.randn(6, 1, 8, 8, dtype=dtype), torch.randint(0, 3, (6,)))
    return mae, head, net, b


def as_float(b: LevelBatches) -> LevelBatches:
    return LevelBatches(b.x1.float(), b.tokens1.float(), b.masking1, b.x2.float(), b.y2, b.x3.float(), b.y3)


# ----- independent references -------------------------------------------------------------
def _named(module):
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def _grad(loss, params, **kw):
    out = torch.autograd.grad(loss, params, allow_unused=True, **kw)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(out, params)]


def _dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def _ce(mae, head, x, y, enc_params=None, head_params=None):
    """CE of head(CLS token of the encoder), optionally at other parameter values."""
    tokens = mae.encoder(x) if enc_params is None else functional_call(mae.encoder, enc_params, (x,))
    cls = tokens[:, 0]
    return F.cross_entropy(head(cls) if head_params is None else functional_call(head, head_params, (cls,)), y)


def _level1_loss(mae, net, b, weighting, enc_params=None, input_grad=False):
    """sum(w * m * e) / sum(m), w = p or p / (mean of p over each image's masked patches);
    ``input_grad``: p = net(the encoder's patch embedding, with its gradient; current weights)."""
    encoder = mae.encoder if enc_params is None else (lambda *a: functional_call(mae.encoder, enc_params, a))
    probs, mask = net(mae.encoder.embed(b.x1) if input_grad else b.tokens1), b.masking1[1]
    if weighting == "normalized":
        probs = probs * mask.sum(1, keepdim=True) / (probs * mask).sum(1, keepdim=True)
    ids_keep, _, ids_restore = b.masking1
    latent = encoder(b.x1, ids_keep)
    pred = mae.decoder(latent, ids_restore)
    p = mae.encoder.patch_size
    target = b.x1.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 4, 5, 1).reshape(len(b.x1), -1, p * p)
    per_patch = (pred - target).pow(2).mean(-1)
    return (probs * mask * per_patch).sum() / mask.sum()


def official_reference(mae, head, net, b, weighting="probability", paths=("direct", "head"), input_grad=False):
    """-H1 v_theta + H1 H2 v_w with exact Hessian-vector products (unit weights)."""
    enc, hp, phi = list(_named(mae.encoder).values()), list(_named(head).values()), list(net.parameters())
    mae.eval(), head.eval()
    with sdpa_kernel(SDPBackend.MATH):
        grads = _grad(_ce(mae, head, b.x3, b.y3), enc + hp)
        v_theta, v_w = grads[: len(enc)], grads[len(enc):]
        g_w = torch.autograd.grad(_ce(mae, head, b.x2, b.y2), hp, create_graph=True)
        h2_v = _grad(_dot(g_w, v_w), enc)
        u = [(vt if "direct" in paths else 0 * vt) - (h if "head" in paths else 0 * h) for vt, h in zip(v_theta, h2_v)]
        g_theta = torch.autograd.grad(_level1_loss(mae, net, b, weighting, input_grad=input_grad), enc,
                                      create_graph=True)
        return [-g for g in _grad(_dot(g_theta, u), phi)]


def unrolled_reference(mae, head, net, b, xi, eta, weighting="probability", paths=("direct", "head")):
    """d L3(w', theta') / d phi after one explicit SGD step of level I (lr xi) and level II (lr eta)."""
    enc, hp = _named(mae.encoder), _named(head)
    mae.eval(), head.eval()
    with sdpa_kernel(SDPBackend.MATH):
        g1 = torch.autograd.grad(_level1_loss(mae, net, b, weighting), list(enc.values()), create_graph=True)
        theta1 = {n: p - xi * g for (n, p), g in zip(enc.items(), g1)}
        g2 = torch.autograd.grad(_ce(mae, head, b.x2, b.y2, theta1), list(hp.values()), create_graph=True)
        w1 = {n: p - eta * g for (n, p), g in zip(hp.items(), g2)}
        # each path alone: hold the other argument of L3 at its (detached) unrolled value
        theta3 = theta1 if "direct" in paths else {n: t.detach() for n, t in theta1.items()}
        w3 = w1 if "head" in paths else {n: t.detach() for n, t in w1.items()}
        return _grad(_ce(mae, head, b.x3, b.y3, theta3, w3), list(net.parameters()))


def stepped(mae, head, net, b, xi, eta, weighting="probability"):
    """Copies of the models after the same explicit SGD steps as ``unrolled_reference`` takes:
    the point at which training evaluates the hypergradient (after levels I and II)."""
    import copy

    mae, head = copy.deepcopy(mae), copy.deepcopy(head)
    mae.eval(), head.eval()
    enc, hp = list(_named(mae.encoder).values()), list(_named(head).values())
    g1 = torch.autograd.grad(_level1_loss(mae, net, b, weighting), enc)
    with torch.no_grad():
        for p, g in zip(enc, g1):
            p.sub_(xi * g)
    g2 = torch.autograd.grad(_ce(mae, head, b.x2, b.y2), hp)
    with torch.no_grad():
        for p, g in zip(hp, g2):
            p.sub_(eta * g)
    return mae.train(), head.train()


def _rel_err(a, b):
    a, b = torch.cat([t.flatten() for t in a]).double(), torch.cat([t.flatten() for t in b]).double()
    return ((a - b).norm() / b.norm()).item()


def _norm(g):
    return torch.cat([t.flatten() for t in g]).norm().item()


# ----- official -------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["ours", "original"])
@pytest.mark.parametrize("masknet", ["mlp", "patch_scorer", "mlp-batch"])
@pytest.mark.parametrize("weighting", ["probability", "normalized"])
def test_official_matches_exact_hessian_vector_products(schedule, masknet, weighting):
    mae, head, net, b = tiny_setup(torch.float64, masknet)
    exact = official_reference(mae, head, net, b, weighting)
    direct = official_reference(mae, head, net, b, weighting, paths=("direct",))
    head_only = official_reference(mae, head, net, b, weighting, paths=("head",))
    assert _norm(head_only) > 0.1 * _norm(direct) > 0  # both paths carry signal at unit weights
    fd64 = mlo_hypergradient(mae, head, net, b, "official", alpha=1e-4, schedule=schedule, weighting=weighting)
    assert _rel_err(fd64, exact) < 1e-6
    # fp32 as in training. On this tiny model (||theta|| ~ 10) alpha = 1e-3 is as small
    # relative to the weights as the default alpha = 0.01 is for a real ViT.
    fd32 = mlo_hypergradient(mae.float(), head.float(), net.float(), as_float(b), "official", alpha=1e-3,
                             schedule=schedule, weighting=weighting)
    assert _rel_err(fd32, exact) < 1e-3


@pytest.mark.parametrize("schedule", ["ours", "original"])
def test_official_with_the_official_masking_input(schedule):
    """The masking net reads the encoder's patch embedding with its gradient: H1 gains the
    path through the tokens; the reference differentiates it exactly."""
    mae, head, net, b = tiny_setup(torch.float64)
    exact = official_reference(mae, head, net, b, input_grad=True)
    detached = official_reference(mae, head, net, b)
    assert _rel_err(detached, exact) > 1e-3  # the token path changes the hypergradient
    fd = mlo_hypergradient(mae, head, net, b, "official", alpha=1e-4, schedule=schedule, input_grad=True)
    assert _rel_err(fd, exact) < 1e-6


def test_ours_reusing_the_level2_features_matches_the_reference_across_level3_steps():
    """Production path of ``ours``: the level-II forward (graph kept) feeds the head edge of
    several level-III evaluations."""
    mae, head, net, b = tiny_setup(torch.float64)
    exact = official_reference(mae, head, net, b)
    mae.eval()
    feats2 = mae.encoder(b.x2)[:, 0]
    mae.train()
    for _ in range(2):  # the graph survives the first use and the encoder perturbations
        fd = mlo_hypergradient(mae, head, net, b, "official", alpha=1e-4, schedule="ours", feats2=feats2)
        assert _rel_err(fd, exact) < 1e-6


def test_no_tf32_sets_and_restores_either_api():
    from lightning_modules.components.hypergradient import exact_fp32, tf32_enabled

    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    if not hasattr(m, "fp32_precision"):
        pytest.skip("torch without the fp32_precision API")
    try:
        m.fp32_precision = "tf32"  # as a user of the new API would (legacy reads now raise)
        assert tf32_enabled()
        with exact_fp32():
            assert m.fp32_precision == c.fp32_precision == "ieee" and not tf32_enabled()
        assert m.fp32_precision == "tf32"
    finally:
        m.fp32_precision = c.fp32_precision = "none"
    assert not m.allow_tf32  # the legacy flags are readable again and untouched


def test_official_ignores_learning_rates_and_unrolled_scales_each_path():
    mae, head, net, b = tiny_setup(torch.float64)
    kw = {"alpha": 1e-4, "schedule": "original"}
    official = mlo_hypergradient(mae, head, net, b, "official", xi=0.3, eta=0.2, **kw)
    assert _rel_err(official, mlo_hypergradient(mae, head, net, b, "official", **kw)) < 1e-12
    info_o, info_u = {}, {}
    mlo_hypergradient(mae, head, net, b, "official", info=info_o, **kw)
    mlo_hypergradient(mae, head, net, b, "unrolled", xi=0.3, eta=0.2, info=info_u, **kw)
    assert info_u["direct"].item() == pytest.approx(0.3 * info_o["direct"].item(), rel=1e-9)
    assert info_u["head"].item() == pytest.approx(0.3 * 0.2 * info_o["head"].item(), rel=1e-9)


# ----- unrolled -------------------------------------------------------------------------
def _unrolled_fd(mae, head, net, b, xi, eta, schedule="ours", eta_in_estimate=None):
    """The estimate as training computes it: at the weights after the level-I and II steps."""
    m1, h1 = stepped(mae, head, net, b, xi, eta)
    eta_est = eta if eta_in_estimate is None else eta_in_estimate
    return mlo_hypergradient(m1, h1, net, b, "unrolled", xi=xi, eta=eta_est, alpha=1e-5, schedule=schedule)


@pytest.mark.parametrize("schedule", ["ours", "original"])
def test_unrolled_error_shrinks_linearly_with_the_learning_rates(schedule):
    mae, head, net, b = tiny_setup(torch.float64)
    errors = [_rel_err(_unrolled_fd(mae, head, net, b, lr, lr, schedule), unrolled_reference(mae, head, net, b, lr, lr))
              for lr in (1e-2, 1e-3, 1e-4)]
    assert errors[0] < 0.5
    assert 5 < errors[0] / errors[1] < 20 and 5 < errors[1] / errors[2] < 20  # O(xi, eta)


@pytest.mark.parametrize("head_scale", [1.0, 1e-4])
def test_unrolled_head_path_at_production_eta(head_scale):
    """eta = 1e-3. With the head as initialised the head path is a few % of the direct path;
    with a near-zero head (the start of training) it dominates. The estimate is linear in eta,
    so g(eta) - g(0) at the same weights isolates the head path; check it, and the total,
    against the reference's, and that the error shrinks linearly with the learning rates."""
    mae, head, net, b = tiny_setup(torch.float64)
    with torch.no_grad():
        head.fc.weight.mul_(head_scale)
    ratio = {}
    for lr in (1e-3, 1e-4):
        total = _unrolled_fd(mae, head, net, b, lr, lr)
        fd_head = [t - d for t, d in zip(total, _unrolled_fd(mae, head, net, b, lr, lr, eta_in_estimate=0.0))]
        ref_head = unrolled_reference(mae, head, net, b, lr, lr, paths=("head",))
        ref_direct = unrolled_reference(mae, head, net, b, lr, lr, paths=("direct",))
        ratio[lr] = _norm(ref_head) / _norm(ref_direct)
        bound = 100 * lr  # O(xi, eta) with this tiny model's constants (~30)
        assert _rel_err(total, unrolled_reference(mae, head, net, b, lr, lr)) < bound
        assert _rel_err(fd_head, ref_head) < bound
    assert (ratio[1e-3] > 1) if head_scale < 1 else (ratio[1e-3] < 0.1)


# ----- schedules, precision, restoration ---------------------------------------------------
@pytest.mark.parametrize("scaling", ["official", "unrolled"])
def test_schedules_agree_with_each_other(scaling):
    mae, head, net, b = tiny_setup(torch.float64)
    ours = mlo_hypergradient(mae, head, net, b, scaling, xi=0.1, eta=0.2, alpha=1e-4, schedule="ours")
    original = mlo_hypergradient(mae, head, net, b, scaling, xi=0.1, eta=0.2, alpha=1e-4, schedule="original")
    assert _rel_err(ours, original) < 1e-6


def test_finite_difference_error_is_second_order_in_alpha():
    mae, head, net, b = tiny_setup(torch.float64)
    exact = official_reference(mae, head, net, b)
    errors = [_rel_err(mlo_hypergradient(mae, head, net, b, alpha=a), exact) for a in (1e-2, 1e-3)]
    assert 80 < errors[0] / errors[1] < 120  # central differences: error ~ alpha^2


def test_hypergradient_under_bf16_autocast_stays_fp32():
    mae, head, net, b = tiny_setup()
    reference = mlo_hypergradient(mae, head, net, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = mlo_hypergradient(mae, head, net, b)
    for r, m in zip(reference, mixed):
        assert m.dtype == torch.float32
        torch.testing.assert_close(m, r, rtol=1e-5, atol=1e-8)


def test_weights_bit_identical_after_finite_differences():
    mae, head, net, b = tiny_setup()
    before = {k: v.clone() for m in (mae, head, net) for k, v in m.state_dict().items()}
    mlo_hypergradient(mae, head, net, b, "unrolled", xi=0.3, eta=0.3)
    after = {k: v for m in (mae, head, net) for k, v in m.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert mae.training and head.training  # modes restored


def test_perturbed_restores_exactly_even_with_rounding():
    p = torch.nn.Parameter(torch.tensor([1.0, 1e-8, 3.3333333]))
    saved = p.detach().clone()
    with perturbed([p], [torch.tensor([0.1, 0.7, 1e-3])], 0.0123456):
        assert not torch.equal(p.detach(), saved)
    assert torch.equal(p.detach(), saved)


@pytest.mark.parametrize("schedule", ["ours", "original"])
def test_logged_path_norms_equal_independent_autograd_values(schedule):
    """``info`` (logged as train/hypergrad_direct, _head, _total, level3_loss) against values
    computed here from the models' forwards and autograd alone, not from the returned gradient."""
    mae, head, net, b = tiny_setup(torch.float64)
    info = {}
    grads = mlo_hypergradient(mae, head, net, b, "official", alpha=1e-4, schedule=schedule, info=info)
    enc, hp = list(_named(mae.encoder).values()), list(_named(head).values())
    mae.eval(), head.eval()
    with sdpa_kernel(SDPBackend.MATH):
        loss3 = _ce(mae, head, b.x3, b.y3)
        v = _grad(loss3, enc + hp)
        v_theta, v_w = v[: len(enc)], v[len(enc):]
        g_w = torch.autograd.grad(_ce(mae, head, b.x2, b.y2), hp, create_graph=True)
        h2_v = _grad(_dot(g_w, v_w), enc)
    assert info["level3_loss"].item() == pytest.approx(loss3.item(), rel=1e-12)
    assert info["direct"].item() == pytest.approx(_norm(v_theta), rel=1e-9)  # ||dL3/dtheta||
    assert info["head"].item() == pytest.approx(_norm(h2_v), rel=1e-5)  # ||H2 v_w||, exact HVP
    assert info["total"].item() == pytest.approx(_norm(official_reference(mae, head, net, b)), rel=1e-5)
    assert info["total"].item() == pytest.approx(_norm(grads), rel=1e-12)


# ----- through the module: MLO-MAE's level III step -------------------------------------
def test_level3_step_moves_the_masking_network_against_the_exact_hypergradient():
    """With SGD, the masking net's update is -lr_mask x its gradient; that gradient must equal an
    exact Hessian-vector-product reference at the weights after levels I and II (a wrong sign,
    or a step along +g, gives a relative error of 2)."""
    module = tiny_module()
    opts, _ = sgd_optimizers(module)
    (x1, _), (x2, y2), (x3, y3) = global_batch()
    _, level1_data = module.level1(x1, opts[0])
    _, feats2 = module.level2(x2, y2, opts[1], keep_graph=True)
    _, tokens1, masking1, _, _ = level1_data
    exact = official_reference(module.mae, module.head, module.masknet,
                               LevelBatches(x1, tokens1, masking1, x2, y2, x3, y3))
    module.mae.train(), module.head.train()
    before = [p.detach().clone() for p in module.masknet.parameters()]
    module.level3(level1_data, x3, y3, x2, y2, feats2, opts[2], opts)
    step = [(b - p.detach()) / module.levels.lr_mask for b, p in zip(before, module.masknet.parameters())]
    flat = torch.cat([s.flatten() for s in step])
    ref = torch.cat([e.flatten() for e in exact])
    assert ref.norm() > 0
    assert ((flat - ref).norm() / ref.norm()).item() < 1e-2  # fp32 finite differences vs exact
