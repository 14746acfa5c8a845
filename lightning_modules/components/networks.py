"""Any timm model by name, with channel and class counts from the data config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from unittest.mock import patch

import huggingface_hub
import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError
from torch import nn


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be fetched or found in the local cache."""


def use_small_input_stem(model: nn.Module) -> nn.Module:
    """Swap a ResNet's 7x7/2 conv + max-pool stem for a 3x3/1 conv (MedMNIST v2 at 28 px)."""
    conv1 = getattr(model, "conv1", None)
    if not isinstance(conv1, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise ValueError(f"small_input_stem needs a ResNet-style model, got {type(model).__name__}")
    model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def timm_network(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    small_input_stem: bool = False,
    **kwargs,
) -> nn.Module:
    """``timm.create_model(name, ...)``; ``name`` may carry a weights tag (``resnet18.tv_in1k``).

    Extra kwargs (``img_size``, ``drop_rate``, ``drop_path_rate``...) go to the model.
    ``small_input_stem`` replaces a ResNet stem for 28-64 px inputs. Pretrained weights come
    from ``pretrained_file`` (a ``.pth`` / ``.safetensors`` state dict downloaded elsewhere;
    the hub is never contacted) or else from the Hugging Face hub; offline without a cached
    copy this fails fast with a clear message. The classifier is always new (``num_classes``)
    and a 1-channel input sums the RGB stem weights (timm's adaptation).
    """
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0].split('_')[0]}*")[:10]
        raise ValueError(f"Unknown timm model {name!r}. Similar names: {close}")
    if "." in name and (pretrained or pretrained_file) and name not in timm.list_pretrained(name):
        tags = timm.list_pretrained(f"{name.split('.')[0]}.*")
        raise ValueError(f"timm has no pretrained weights {name!r}; available tags: {tags}")
    if pretrained_file is not None:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise PretrainedWeightsError(
                f"model.net.pretrained_file={str(path)!r} does not exist; download the weights of {name!r} "
                "on a connected machine (e.g. huggingface.co/timm) and point pretrained_file at the file"
            )
        overlay = {"file": str(path), "source": ""}
        try:
            with patch.object(hf_constants, "HF_HUB_OFFLINE", True):
                model = timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_chans,
                                          pretrained_cfg_overlay=overlay, **kwargs)
            check_weights_cover(model, path, name)
        except (RuntimeError, OSError, ValueError, KeyError) as err:
            raise PretrainedWeightsError(
                f"{path} does not hold weights of {name!r}: {type(err).__name__}: {str(err)[:500]}"
            ) from err
    else:
        model = _create(name, num_classes, in_chans, pretrained, **kwargs)
    return use_small_input_stem(model) if small_input_stem else model


def check_weights_cover(model: nn.Module, path: Path, name: str) -> None:
    """timm loads a file non-strictly: make sure it held every tensor but the classifier."""
    state = timm.models.load_state_dict(str(path))
    classifier = model.pretrained_cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    missing = [k for k in model.state_dict()
               if k not in state and not any(k == h or k.startswith(h + ".") for h in heads)]
    if missing:
        raise ValueError(f"{len(missing)} of the model's tensors are not in the file, e.g. {missing[:5]}")


def hub_reachable(repo_id: str, timeout_s: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers for ``repo_id``, asked through ``huggingface_hub``
    itself: ``HF_HUB_OFFLINE`` means no (nothing is sent), and its HTTP client honours
    ``HTTPS_PROXY`` / ``HF_ENDPOINT``. One request with a ``timeout_s`` limit, no retries; any
    answer from the server (even 404) counts as reachable."""
    if hf_constants.HF_HUB_OFFLINE:
        return False
    try:
        huggingface_hub.model_info(repo_id, timeout=timeout_s)
    except HfHubHTTPError:
        return True  # the server answered: the weights' own error will say what is wrong
    except Exception:  # connection refused, DNS, proxy or timeout errors of the HTTP client
        return False
    return True


def _create(name: str, num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> nn.Module:
    def create() -> nn.Module:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)

    if not pretrained:
        return create()
    pretrained_cfg = timm.models.get_pretrained_cfg(name)
    online = hub_reachable(getattr(pretrained_cfg, "hf_hub_id", None) or f"timm/{name}")
    try:
        if online:
            return create()
        # Offline: use only the local cache, so the hub client does not retry for a minute.
        with patch.object(hf_constants, "HF_HUB_OFFLINE", True):
            return create()
    except Exception as err:  # hub / network / missing-weights errors
        where = "" if online else f" (the Hugging Face hub {hf_constants.ENDPOINT} is unreachable or HF_HUB_OFFLINE is set)"
        raise PretrainedWeightsError(
            f"Could not load pretrained weights for {name!r}{where}: {type(err).__name__}: {err}. "
            "The weights come from the Hugging Face hub and need network access once; "
            "download them on a connected machine (they are cached under ~/.cache/huggingface) and "
            "set model.net.pretrained_file=<file>, or set model.net.pretrained=false to train from scratch."
        ) from err


def vit_network(
    num_classes: int,
    in_chans: int,
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.0,
    pooling: str = "cls",
    head_dropout: float = 0.0,
    pretrained_ckpt: str | None = None,
) -> nn.Module:
    """Our ``ViTClassifier`` (MAE-compatible encoder + LayerNorm/Dropout/Linear head).

    ``pretrained_ckpt``: a pretraining (or classifier) checkpoint whose encoder weights are
    loaded strictly; the head is always new. Errors before training on any mismatch.
    """
    from core.checkpoints import load_encoder
    from lightning_modules.components.vit import ViTClassifier, ViTEncoder

    encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                         drop_path_rate=drop_path_rate)
    if pretrained_ckpt:
        load_encoder(encoder, pretrained_ckpt)
    return ViTClassifier(encoder, num_classes, pooling=pooling, head_dropout=head_dropout)


def penultimate_features(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """images (B, C, H, W) -> the features the classification layer sees (B, F)."""
    if hasattr(net, "forward_head") and hasattr(net, "forward_features"):  # timm
        return lambda x: net.forward_head(net.forward_features(x), pre_logits=True)
    from lightning_modules.components.vit import ViTClassifier

    if isinstance(net, ViTClassifier):
        return net.features  # pooled encoder output, before the head's norm
    last = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError(f"{type(net).__name__} has no nn.Linear layer to take features from")

    def features(x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        handle = last[-1].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            net(x)
        finally:
            handle.remove()
        return seen[-1].flatten(1)

    return features
