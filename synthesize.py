"""Sample a diffusion checkpoint into a synthetic training set: ``python synthesize.py CKPT --out
synthetic.npz`` (installed as ``medmae-synthesize``). A thin entry point to
``synthesis.synthesize``; ``--help`` lists the options."""

import sys

from synthesis.synthesize import main

if __name__ == "__main__":
    sys.exit(main())
