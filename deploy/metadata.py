"""What an exported model says about itself to a consumer that has none of our code: plain
string keys (ONNX ``metadata_props``, TorchScript extra files) and a MONAI-bundle-style
``metadata.json`` written beside the model (and into TorchScript's extra files, as MONAI's
``save_net_with_metadata`` does).

Plain keys: ``class_names`` (JSON list, output column order), ``task``, ``input_name``,
``input_layout`` (``NCHW`` or ``NHWC``), ``input_dtype``, ``input_size``, ``input_channels``,
``preprocessing`` (a sentence: what the consumer does and what the graph does), ``output_names``,
``output_activation``, ``decision`` (the rule ``predicted`` follows), ``thresholds`` (JSON
``{class: threshold}``: the positive class of a binary model, every label of a multi-label one,
tuned on validation; ``{}`` without one), ``class_offsets`` (JSON ``{class: offset}`` of a
multi-class model tuned on validation, else ``{}``), ``model_version``, ``description``,
``trained_on`` and ``producer``.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from importlib import metadata as package_metadata

import numpy as np
import torch

from core.data_identity import describe

PRODUCER = "medmae"


@dataclass(frozen=True)
class About:
    """What the person exporting says about the model: an integer version (ONNX's
    ``model_version``) and a description (ONNX's ``doc_string``; None: written from the record)."""

    model_version: int = 1
    description: str | None = None


def decision_text(record: dict) -> str:
    """The decision rule ``predicted`` follows, in words."""
    rule, names = record["output"].get("decision"), record["output"]["class_names"]
    if rule is None:
        return "argmax of the probabilities" if record["output"]["activation"] == "softmax" else \
            "every label with probability >= 0.5"
    if rule["kind"] == "binary_threshold":
        return f"{names[1]} when P({names[1]}) >= thresholds[{names[1]!r}], else {names[0]} (tuned on validation)"
    if rule["kind"] == "label_thresholds":
        return "every label whose probability >= its thresholds entry (tuned on validation)"
    return "argmax of log(probability) + class_offsets (tuned on validation)"


def thresholds(record: dict) -> tuple[dict[str, float], dict[str, float]]:
    """({class: threshold}, {class: offset}) of the record's tuned decision rule (empty without one)."""
    rule, names = record["output"].get("decision") or {}, record["output"]["class_names"]
    if rule.get("kind") == "binary_threshold":
        return {names[1]: float(rule["threshold"])}, {}
    if rule.get("kind") == "label_thresholds":
        return dict(zip(names, map(float, rule["thresholds"]))), {}
    if rule.get("kind") == "class_offsets":
        return {}, dict(zip(names, map(float, rule["offsets"])))
    return {}, {}


def preprocessing_text(record: dict) -> str:
    """What a consumer does to an image before the model, and what the graph does."""
    spec, decode = record["input"], record["decode"]
    size = f"{spec['size']} x {spec['size']}"
    norm = "" if spec["mean"] is None else f", then (x - mean) / std with mean {spec['mean']} and std {spec['std']}"
    if spec.get("in_graph"):
        return (f"give uint8 pixels (0-255) as (N, {spec['size']}, {spec['size']}, {spec['channels']}) NHWC, each "
                f"image made square ({decode['resize']}) and resized to {size}; the graph divides by 255, repeats a "
                f"grayscale channel to the network's {spec['network_channels']}{norm}")
    return (f"make each image square ({decode['resize']}) at {decode['size']} x {decode['size']} 8-bit pixels, divide by "
            f"255 (float32), repeat a grayscale channel to {spec['channels']} channels, resize to {size} (bilinear, "
            f"antialiased) when it differs{norm}; layout (N, {spec['channels']}, {spec['size']}, {spec['size']}) NCHW")


def default_description(record: dict, network: str, data: dict | None) -> str:
    names = record["output"]["class_names"]
    return (f"{network} {record['output']['task']} classifier of {len(names)} classes ({', '.join(names)}) "
            f"trained with medmae on {describe(data)}; research use, not a medical device")


def plain_metadata(record: dict, about: About, network: str, data: dict | None, outputs: list[str]) -> dict[str, str]:
    """The plain string keys of the module docstring."""
    spec = record["input"]
    by_class, offsets = thresholds(record)
    return {
        "class_names": json.dumps(record["output"]["class_names"]), "task": record["output"]["task"],
        "input_name": "images", "input_layout": spec["layout"], "input_dtype": spec["dtype"],
        "input_size": str(spec["size"]), "input_channels": str(spec["channels"]),
        "preprocessing": preprocessing_text(record), "output_names": ",".join(outputs),
        "output_activation": record["output"]["activation"], "decision": decision_text(record),
        "thresholds": json.dumps(by_class), "class_offsets": json.dumps(offsets),
        "model_version": str(about.model_version),
        "description": about.description or default_description(record, network, data),
        "trained_on": describe(data), "producer": PRODUCER,
    }


def _version(package: str) -> str | None:
    try:
        return package_metadata.version(package)
    except package_metadata.PackageNotFoundError:
        return None


def bundle_metadata(record: dict, plain: dict[str, str], fmt: str, source: str) -> dict:
    """A MONAI-bundle-style ``metadata.json`` (the keys of MONAI's bundle specification; not
    validated against its schema) with our record and plain keys under ``medmae``."""
    spec, names = record["input"], record["output"]["class_names"]
    channel_def = {str(i): n for i, n in enumerate(names)}
    optional = {p: v for p in ("onnx", "onnxruntime", "pydicom", "pillow") if (v := _version(p))}
    version = plain["model_version"]
    value_range = [0, 255] if spec["dtype"] == "uint8" else []
    return {
        "version": version, "changelog": {version: f"exported by medmae from {source} ({fmt})"},
        "pytorch_version": torch.__version__.split("+")[0], "numpy_version": np.__version__,
        "python_version": platform.python_version(), "optional_packages_version": optional,
        "task": f"{record['output']['task']} classification of 2D images", "description": plain["description"],
        "authors": PRODUCER, "copyright": None, "data_source": plain["trained_on"],
        "data_type": "png, jpeg, tiff, bmp or dicom files",
        "image_classes": f"{spec['channels']} channel(s), {plain['preprocessing']}",
        "label_classes": ", ".join(f"{i}: {n}" for i, n in enumerate(names)),
        "pred_classes": f"{len(names)} scores per image ({plain['output_names']}; probabilities = "
                        f"{record['output']['activation']} of the logits), channel i = class i; decision: {plain['decision']}",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "any 2D", "num_channels":
                                 spec["channels"], "spatial_shape": [spec["size"], spec["size"]], "dtype": spec["dtype"],
                                 "value_range": value_range, "is_patch_data": False,
                                 "channel_def": {str(c): "intensity" for c in range(spec["channels"])}}},
            "outputs": {name: {"type": "probabilities" if name == "probabilities" else "logits", "format": "classes",
                               "num_channels": len(names), "spatial_shape": [1], "dtype": "float32",
                               "value_range": [0, 1] if name == "probabilities" else [], "is_patch_data": False,
                               "channel_def": channel_def} for name in plain["output_names"].split(",")},
        },
        "medmae": {"preprocessing": record, "metadata": plain},
    }
