"""MLO-MAE's options in three typed groups (``model.masking``, ``model.levels``,
``model.hypergradient`` in ``conf/model/mlo_mae.yaml``), each checked when it is built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from lightning_modules.components.hypergradient import SCALINGS, SCHEDULES
from lightning_modules.components.masking import PATCH_WEIGHTINGS

MASK_MODES = ("learned", "random")


def _one_of(group: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"model.{group}.{name}={value!r} is invalid; allowed: {list(allowed)}")


@dataclass(frozen=True)
class MaskingOptions:
    """The masking network (level III's parameters) and how its probabilities are used.

    net: ``mlp`` (MLO-MAE's) or ``patch_scorer`` (light); hidden: its width (None: 512 for mlp,
    128 for patch_scorer); temperature divides the logits; input_norm (``none``, ``token``,
    ``batch``) normalises its input; input_grad: MLO-MAE's official code's input, the encoder's
    patch embedding with its gradient (default: detached); patch_weighting: ``probability``
    (MLO-MAE's w = p) or ``normalized`` (p over its mean over each image's masked patches);
    mode: ``learned``, or ``random`` (plain MAE inside the module; no level III).
    """

    net: str = "mlp"
    hidden: int | None = None
    temperature: float = 1.0
    input_norm: str = "none"
    input_grad: bool = False
    patch_weighting: str = "probability"
    mode: str = "learned"

    def __post_init__(self) -> None:  # net, hidden, temperature, input_norm: checked by build_masking_net
        _one_of("masking", "patch_weighting", self.patch_weighting, PATCH_WEIGHTINGS)
        _one_of("masking", "mode", self.mode, MASK_MODES)


@dataclass(frozen=True)
class LevelOptions:
    """The cycle and the levels above the autoencoder.

    cadence: level I : II : III steps per cycle, e.g. (2, 1, 1), integers >= 1; lr_head,
    lr_mask: the rates of level II (the classification head) and level III (the masking
    network), level I's being ``model.lr``; pooling, head_dropout: the head's input and dropout.
    """

    cadence: tuple[int, int, int] = (2, 1, 1)
    lr_head: float = 1e-3
    lr_mask: float = 1e-3
    pooling: str = "cls"
    head_dropout: float = 0.1

    def __post_init__(self) -> None:
        c = list(self.cadence)
        if len(c) != 3 or any(int(v) != v or v < 1 for v in c):
            raise ValueError(f"model.levels.cadence={c} is invalid; allowed: three integers >= 1 (level I : II : III)")
        object.__setattr__(self, "cadence", tuple(int(v) for v in c))


@dataclass(frozen=True)
class HypergradientOptions:
    """The finite-difference hypergradient of level III (``components/hypergradient.py``).

    schedule: ``ours`` or ``original`` order of passes (same estimate); scaling: ``official``
    (unit weights, MLO-MAE's code) or ``unrolled`` (paths scaled by the level-I lr xi and xi *
    the level-II lr eta); alpha: finite-difference scale (eps = alpha / ||v||); reduce: all-reduce
    every ``autograd.grad`` result under DDP (only a test switches it off, to show that ranks
    then drift apart).
    """

    schedule: str = "ours"
    scaling: str = "official"
    alpha: float = 0.01
    reduce: bool = True

    def __post_init__(self) -> None:
        _one_of("hypergradient", "schedule", self.schedule, SCHEDULES)
        _one_of("hypergradient", "scaling", self.scaling, SCALINGS)
        if not self.alpha > 0:
            raise ValueError(f"model.hypergradient.alpha={self.alpha} is invalid; allowed: > 0")


def options(kind: type, group: str, value: Any):
    """``value`` (None, a mapping from the config, or an instance) as a ``kind``; an unknown key
    is one error listing the known ones."""
    if isinstance(value, kind):
        return value
    known = [f.name for f in fields(kind)]
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(f"model.{group}={value!r} is invalid: model.{group} is a group of options {known}; "
                         f"set one of them, e.g. model.{group}.{known[0]}=...")
    value = dict(value or {})
    if unknown := sorted(set(value) - set(known)):
        raise ValueError(f"model.{group} has no option {unknown}; allowed: {known}")
    return kind(**value)
