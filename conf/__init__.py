"""The Hydra configs (``train.yaml`` and its groups). A package only so that installs carry the
YAML files: it is installed as ``medmae_conf``, which the entry points read them from."""
