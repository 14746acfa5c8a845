"""The preprocessing of a preprocessing record (``datamodules.input_record``) as torch modules,
so that an export can carry it in its graph: a consumer feeds raw 8-bit pixels and needs none
of our code.

``Preprocess``: uint8 (N, H, W, C) -> float32 (N, C', H, W): scale by 1/255, repeat a grayscale
channel when the network takes 3 (C' = the network's channels), normalise by the record's mean /
std. No resize: the images must already be ``input.size`` pixels square. ``RawInputModel``: that,
then the network, returning (logits (N, K), probabilities (N, K): softmax, or per-label sigmoid
for multi-label).
"""

from __future__ import annotations

import torch
from torch import nn

RAW_LAYOUT = "NHWC"


class Preprocess(nn.Module):
    """uint8 (N, H, W, C) -> normalised float32 (N, C', H, W) as the record says (see the module docstring)."""

    def __init__(self, record: dict) -> None:
        super().__init__()
        spec = record["input"]
        self.source_channels, self.channels = int(record["decode"]["channels"]), int(spec["channels"])
        if self.source_channels != self.channels and (self.source_channels, self.channels) != (1, 3):
            raise ValueError(f"the record maps {self.source_channels}-channel images to a {self.channels}-channel "
                             "network; only 1 -> 3 (grayscale repeated) can be put in a graph")
        self.normalise = spec["mean"] is not None
        shape = (1, self.channels, 1, 1)
        mean = torch.tensor(spec["mean"] if self.normalise else [0.0] * self.channels).reshape(shape)
        std = torch.tensor(spec["std"] if self.normalise else [1.0] * self.channels).reshape(shape)
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 255.0
        if self.channels != self.source_channels:
            x = x.expand(-1, self.channels, -1, -1)
        return (x - self.mean) / self.std if self.normalise else x


class RawInputModel(nn.Module):
    """``Preprocess`` then the network: uint8 (N, H, W, C) -> (logits, probabilities), each (N, K)."""

    def __init__(self, net: nn.Module, record: dict) -> None:
        super().__init__()
        self.preprocess, self.net = Preprocess(record), net
        self.sigmoid = record["output"]["activation"] == "sigmoid"

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(self.preprocess(pixels))
        return logits, (logits.sigmoid() if self.sigmoid else logits.softmax(-1))


def raw_record(record: dict) -> dict:
    """The record of a raw-input export: the input is uint8 ``RAW_LAYOUT`` at ``input.size``,
    ``decode.channels`` channels; scaling, channel repeat and mean / std are in the graph."""
    spec = record["input"]
    return {**record, "input": {**spec, "layout": RAW_LAYOUT, "dtype": "uint8",
                                "channels": int(record["decode"]["channels"]),
                                "network_channels": int(spec["channels"]), "in_graph": True}}
