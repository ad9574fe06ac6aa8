"""Prompts from a Hugging Face dataset (``datasets.load_dataset``): a hub id or a local folder.

The same code path serves ``openai/gsm8k`` on the hub and a local folder laid out like a hub
dataset repository (data files, plus a README.md whose YAML header declares the configs), so
recipes are tested offline by pointing ``task.dataset`` at such a folder.
"""

from __future__ import annotations

from steerl.config import ConfigError, TaskConfig
from steerl.tasks.base import Task
from steerl.tasks.files import rows_to_prompts, split_pools


def load_split(cfg: TaskConfig, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "task.kind=hf needs the datasets package: pip install 'steerl[hf]'"
        ) from None
    try:
        ds = datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=split)
    except Exception as e:  # noqa: BLE001 - one message for every way loading can fail
        raise ConfigError(
            f"task.dataset={cfg.dataset!r} (config {cfg.dataset_config!r}, split {split!r}) "
            f"could not be loaded: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ". Use a hub id (needs network access) or a local dataset folder, and check "
            "task.dataset_config and task.split / task.eval_split."
        ) from None
    return [dict(r) for r in ds]


class HFDatasetTask(Task):
    """Training prompts from ``task.split``, held-out prompts from ``task.eval_split``."""

    name = "hf"

    def __init__(self, cfg: TaskConfig):
        assert cfg.dataset is not None
        source = f"{cfg.dataset}:{cfg.split}"
        train = rows_to_prompts(load_split(cfg, cfg.split), cfg, source)
        evals = None
        if cfg.eval_split:
            evals = rows_to_prompts(
                load_split(cfg, cfg.eval_split), cfg, f"{cfg.dataset}:{cfg.eval_split}"
            )
        super().__init__(*split_pools(train, evals, cfg, source))
