"""Run orchestration behind ``train.py``: one run (``pipeline.run``), multi-stage pipelines
(``pipeline.stages``), the command line (``pipeline.cli``) and sweeps (``pipeline.sweep``).

Nothing is imported here, so that ``pipeline.cli`` stays light (``train.py --help``)."""
