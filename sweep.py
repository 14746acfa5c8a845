"""Hyperparameter search (Optuna): ``python sweep.py experiment=<name> [overrides]`` (installed
as ``medmae-sweep``). A thin entry point to ``pipeline.sweep``; ``--help`` explains the options."""

import sys

from pipeline.sweep import main

if __name__ == "__main__":
    sys.exit(main())
