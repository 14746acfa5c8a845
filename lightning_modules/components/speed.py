"""GPU speed options shared by the training modules: ``torch.compile``, fused optimisers,
channels-last CNNs and a check that attention runs through SDPA (flash attention on GPUs)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def compile_options(value: bool | dict | None) -> dict | None:
    """``model.compile``: false / null (off), true (``torch.compile`` defaults) or a dict of its
    keyword arguments (``mode``, ``backend``, ``dynamic``, ``fullgraph``)."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        allowed = set(inspect.signature(torch.compile).parameters) - {"model"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"model.compile has unknown keys {unknown}; allowed: {sorted(allowed)}")
        return dict(value)
    raise ValueError(f"model.compile={value!r} is invalid; allowed: true, false or a dict of torch.compile options")


def compile_networks(networks: Iterable[nn.Module], options: dict | None) -> None:
    """Compile each network in place (``nn.Module.compile``: parameter names and checkpoints are
    unchanged); no-op when ``options`` is None or a network is compiled already."""
    if options is None:
        return
    for net in networks:
        if getattr(net, "_compiled_call_impl", None) is None:
            net.compile(**options)


@contextmanager
def eager():
    """Run compiled networks eagerly inside the block (MLO-MAE's finite-difference passes)."""
    with torch.compiler.set_stance("force_eager"):
        yield


def fused_kwargs(factory: Callable[..., torch.optim.Optimizer], params: list) -> dict[str, Any]:
    """``{"fused": True}`` when every parameter is a floating CUDA tensor and the optimiser
    (``torch.optim.AdamW``, ``Adam``, ``SGD``, or a partial of one) takes ``fused`` and was not
    given it (nor ``foreach``); otherwise ``{}`` (CPU runs keep the default foreach
    implementation). ``params``: a list of parameters or parameter groups (not a generator)."""
    func = getattr(factory, "func", factory)
    given = getattr(factory, "keywords", {})
    try:
        takes = "fused" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    on_cuda = bool(tensors) and all(p.is_cuda and p.is_floating_point() for p in tensors)
    chosen = "fused" in given or "foreach" in given
    return {"fused": True} if takes and on_cuda and not chosen else {}


def adamw(groups: list[dict], **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over parameter groups, fused on CUDA."""
    return torch.optim.AdamW(groups, **kwargs, **fused_kwargs(torch.optim.AdamW, groups))


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The timm attention layers of ``model`` (those with a ``fused_attn`` switch)."""
    return [m for m in model.modules() if hasattr(m, "fused_attn")]


def uses_sdpa(model: nn.Module) -> bool:
    """True when every timm attention layer calls ``F.scaled_dot_product_attention`` (which
    dispatches to flash attention on GPUs for bf16 / fp16 inputs), not its own matmul path."""
    layers = attention_modules(model)
    return bool(layers) and all(m.fused_attn for m in layers)


def to_channels_last(net: nn.Module) -> nn.Module:
    """4-D weights in NHWC memory order (faster cuDNN convolutions, tensor cores)."""
    return net.to(memory_format=torch.channels_last)
