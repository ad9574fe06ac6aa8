"""Config section ``logging``: metric sinks, progress bar and report."""

from __future__ import annotations

from pydantic import Field

from steerl.config_base import Section


class LoggingConfig(Section):
    tensorboard: bool = True  # write tb/ event files
    wandb: bool = False  # log to Weights & Biases (pip install steerl[wandb])
    wandb_project: str = "steerl"  # W&B project
    mlflow: bool = False  # log to MLflow (pip install steerl[mlflow])
    progress: bool = True  # rich progress bar on the console
    samples_every: int = Field(10, ge=0)  # write a few completions to samples.jsonl (0: off)
    report: bool = True  # write PNG plots and report.html at the end
