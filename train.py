"""Train: ``python train.py experiment=<name> [overrides]`` (installed as ``medmae-train``).

A thin entry point; the work is ``pipeline.cli.train(cfg)``. ``python train.py --help`` lists
the experiments.
"""

from pipeline.cli import CONF_DIR, compose_config, train, train_main  # noqa: F401  (used by scripts and tests)

if __name__ == "__main__":
    train_main()
