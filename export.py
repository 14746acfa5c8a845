"""Export a trained classifier: ``python export.py CKPT --format onnx|torchscript`` (installed as
``medmae-export``). A thin entry point to ``deploy.export``; ``--help`` lists the options."""

import sys

from deploy.export import main

if __name__ == "__main__":
    sys.exit(main())
