"""The input pipeline of a trained classifier as data (the "preprocessing record"): how an image
file becomes the network's input and what its outputs mean. Stored in every classifier
checkpoint (``callbacks.run_config``), in exported files and ``export.json`` (``deploy``), and
applied by ``deploy.preprocessing.load_inputs``, so a model predicts without its training data.

Keys: ``decode`` (``size``, ``channels``, ``resize``, ``intensity`` = ``data.intensity``'s
``IntensityConfig.key()`` with its DICOM / window settings, ``fallback_bits``), ``input``
(``layout``, ``dtype``, ``size``, ``channels``, ``scale``, ``mean``, ``std``), ``output``
(``kind``, ``activation``, ``task``, ``class_names``; ``decision``: the decision rule tuned on
validation, ``evaluation.thresholds.decision_rule``, when one was tuned).
"""

from __future__ import annotations

from core.tasks import MULTI_LABEL

FORMAT = "medmae.preprocessing/1"


def preprocessing_of(datamodule) -> dict:
    """The record of a set-up datamodule (its test-time transform); AttributeError when the
    datamodule was not set up (no ``input_stats`` yet) or is not a labelled one."""
    stats = datamodule.input_stats
    intensity = getattr(datamodule, "intensity", None)
    return {
        "format": FORMAT,
        "decode": {"size": int(datamodule.source_size), "channels": int(datamodule.source_channels),
                   "resize": getattr(datamodule, "resize", "shorter_side_crop"),
                   "intensity": intensity.key() if intensity is not None else {"mode": "auto"},
                   # the bit depth auto gave the dataset's deep files that declare none (None: 8-bit data)
                   "fallback_bits": getattr(datamodule, "fallback_bits", None)},
        "input": {"layout": "NCHW", "dtype": "float32", "size": int(datamodule.img_size),
                  "channels": int(datamodule.in_chans), "scale": 1 / 255,
                  "mean": None if stats is None else [float(v) for v in stats[0]],
                  "std": None if stats is None else [float(v) for v in stats[1]]},
        "output": {"kind": "logits", "activation": "sigmoid" if datamodule.task == MULTI_LABEL else "softmax",
                   "task": datamodule.task, "class_names": [str(c) for c in datamodule.class_names]},
    }


def check_record(record: dict | None, source: str) -> dict:
    """The record, or a ValueError naming ``source`` when it is not one this code can apply."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{source} carries no {FORMAT} preprocessing record (exported before medmae recorded it?); "
                         "export the checkpoint again with export.py")
    return record
