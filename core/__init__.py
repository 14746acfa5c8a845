"""The bottom layer: what every package may import, and which imports nothing of ours.

Layers, each importing only the ones before it (``tests/test_layers.py`` walks every import):

    core -> datamodules -> lightning_modules -> evaluation -> callbacks -> synthesis, deploy
    -> pipeline -> entry points (train.py, evaluate.py, ...)

- ``core.tasks``: task names shared by data, models and metrics.
- ``core.io``: atomic file writes (a temporary file in the same folder, then a rename), file locks.
- ``core.options``: typed option groups from config keys (frozen dataclasses, errors naming the key).
- ``core.checkpoints``: checkpoints in one place: reading and writing them, the config and
  records stored inside them, ``wandb:`` references, encoder weights, trained classifiers.
- ``core.tracking``: Weights & Biases in one place (mode, jobs, artifacts, run ids, tags).
- ``core.resolvers``: config resolvers of the machine and session (GPU defaults, matmul
  precision, W&B mode, launch folder); ``datamodules.resolvers`` adds the data's.
- ``core.data_identity``: what data a run used (file and hash, table / folder fingerprint, or
  the synthetic generator), compared before results are pooled.
- ``core.file_hash``: sha256 of data files, computed once per file version.
- ``core.predictions``: prediction files and the validation confusion history.
- ``core.undefined_classes``: classes whose AUROC / AP is undefined in a split, named in warnings.
- ``core.errors``: the one message of an error, unwrapped from config instantiation and
  DataLoader worker tracebacks.
"""
