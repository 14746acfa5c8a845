"""Evaluation library shared by the callbacks, ``evaluate.py`` and ``aggregate.py``: per-class
metric tables, figures, threshold tuning, ``eval/`` writing and the run report."""
