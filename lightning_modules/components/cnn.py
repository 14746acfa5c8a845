"""The 4-conv CNN of Chan et al.'s DermaMNIST baseline ("DermaMNIST CNN Multi-class classification",
Chan, Ho, Kim, Xie & Chen)."""

from __future__ import annotations

import torch
from torch import nn


def _conv(in_ch: int, out_ch: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, out_ch, kernel_size=3), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def feature_map_size(img_size: int) -> int:
    """Spatial size after the conv stack: two (3x3 valid conv) pairs, each followed by a 2x2 pool."""
    after_first = (img_size - 4) // 2
    return (after_first - 4) // 2


class DermaCNN(nn.Module):
    """3x3 conv + BN + ReLU with 16, 16 (+pool), 64, 64 (+pool) channels, then an MLP.

    At 28 px the feature map is 64 x 4 x 4, so the head is 1024 -> 128 -> 128 -> classes
    as in Chan et al.; other input sizes change only the first fully connected layer.

    Args:
        in_chans: image channels (1 or 3).
        num_classes: number of output logits.
        img_size: input height = width in px (at least 14).
    Shapes: (B, in_chans, img_size, img_size) -> (B, num_classes).
    """

    def __init__(self, in_chans: int, num_classes: int, img_size: int = 28, hidden: int = 128) -> None:
        super().__init__()
        side = feature_map_size(img_size)
        if side < 1:
            raise ValueError(f"DermaCNN needs img_size >= 14, got {img_size}")
        self.features = nn.Sequential(
            _conv(in_chans, 16, pool=False),
            _conv(16, 16, pool=True),
            _conv(16, 64, pool=False),
            _conv(64, 64, pool=True),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
