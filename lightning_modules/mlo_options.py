"""MLO-MAE's options in three typed groups (``model.masking``, ``model.levels``,
``model.hypergradient`` in ``conf/model/mlo_mae.yaml``), each checked when it is built."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.options import group
from lightning_modules.components.hypergradient import SCALINGS, SCHEDULES
from lightning_modules.components.masking import PATCH_WEIGHTINGS

MASK_MODES = ("learned", "random")


def _one_of(group: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"model.{group}.{name}={value!r} is invalid; allowed: {list(allowed)}")


@dataclass(frozen=True)
class MaskingOptions:
    """The masking network (level III's parameters) and how its probabilities are used.

    The group ``model.masking`` of ``model=mlo_mae`` (``conf/model/masking/mlo.yaml``), as in
    every model the masking strategy's name and options: name is ``mlo`` (the MAE strategies,
    ``components/strategies``, belong to ``model=mae``).

    net: ``mlp`` (MLO-MAE's) or ``patch_scorer`` (light); hidden: its width (None: 512 for mlp,
    128 for patch_scorer); temperature divides the logits; input_norm (``none``, ``token``,
    ``batch``) normalises its input; input_grad: MLO-MAE's official code's input, the encoder's
    patch embedding with its gradient (default: detached); patch_weighting: ``probability``
    (MLO-MAE's w = p) or ``normalized`` (p over its mean over each image's masked patches);
    mode: ``learned``, or ``random`` (plain MAE inside the module; no level III).
    """

    name: str = "mlo"
    net: str = "mlp"
    hidden: int | None = None
    temperature: float = 1.0
    input_norm: str = "none"
    input_grad: bool = False
    patch_weighting: str = "probability"
    mode: str = "learned"

    @staticmethod
    def check_name(name: Any) -> None:
        if name != "mlo":
            raise ValueError(f"model.masking={name!r} is a masking strategy of MAE (model=mae); MLO-MAE masks by its "
                             "learned masking network, model.masking=mlo (model.masking.mode=random: random masks "
                             "inside MLO-MAE, for ablations)")

    def __post_init__(self) -> None:  # net, hidden, temperature, input_norm: checked by build_masking_net
        self.check_name(self.name)
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


def options(kind: type, group_name: str, value: Any):
    """``value`` (None, a mapping from the config, or an instance) of ``model.<group_name>`` as a
    ``kind``; an unknown key is one error listing the known ones. ``model.masking`` may also be
    its strategy's name, and a wrong name is named before any option."""
    if kind is MaskingOptions:
        value = {"name": value} if isinstance(value, str) else value
        if isinstance(value, Mapping) and "name" in value:
            MaskingOptions.check_name(value["name"])
    return group(kind, f"model.{group_name}", value)
