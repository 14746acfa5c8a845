"""Mean +- std over seeds: ``python aggregate.py <multirun dir>`` (installed as
``medmae-aggregate``). A thin entry point to ``evaluation.aggregate``; ``--help`` lists the options."""

import sys

from evaluation.aggregate import main

if __name__ == "__main__":
    sys.exit(main())
