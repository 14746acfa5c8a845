"""Re-evaluate checkpoints and ensembles: ``python evaluate.py CKPT [CKPT ...]`` (installed as
``medmae-evaluate``). A thin entry point to ``evaluation.evaluate``; ``--help`` lists the options."""

import sys

from evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
