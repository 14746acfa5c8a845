"""Classify image files: ``python predict.py MODEL IMAGES...`` (installed as ``medmae-predict``).
A thin entry point to ``deploy.predict``; ``--help`` lists the options."""

import sys

from deploy.predict import main

if __name__ == "__main__":
    sys.exit(main())
