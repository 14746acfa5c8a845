"""The bottom layer: what every package may import, and which imports nothing of ours.

Layers, each importing only the ones before it (``tests/test_layers.py`` walks every import):

    core -> datamodules -> lightning_modules -> evaluation -> callbacks -> synthesis, deploy
    -> pipeline -> entry points (train.py, evaluate.py, ...)

- ``core.tasks``: task names shared by data, models and metrics.
- ``core.io``: atomic file writes (a temporary file in the same folder, then a rename).
- ``core.predictions``: prediction files and the validation confusion history.
- ``core.config``: the run config of a checkpoint (stored inside it, else ``config.yaml``).
"""
