"""Run orchestration behind ``train.py``: one run (``run``) and multi-stage pipelines (``stages``)."""

from pipeline.run import run_stage
from pipeline.stages import run_pipeline, stage_config

__all__ = ["run_pipeline", "run_stage", "stage_config"]
