"""Config section ``task``: where prompts and reference answers come from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from steerl.config_base import Section


class ArithmeticTaskConfig(Section):
    """Addition with operands and answer written least-significant digit first."""

    levels: list[int] = [1, 2, 3]  # difficulty levels = number of digits per operand
    train_per_level: int = Field(4000, ge=1)  # training prompts drawn per level
    train_counts: dict[int, int] = {}  # per-level override of train_per_level, e.g. {3: 200}
    eval_per_level: int = Field(200, ge=1)  # held-out prompts per level (never trained on)
    pad: bool = True  # zero-pad operands to the level's width (fixed digit positions)

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if not v or any(lv < 1 or lv > 9 for lv in v):
            raise ValueError(f"levels must be a non-empty list of integers in 1..9, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _counts(self) -> ArithmeticTaskConfig:
        bad = {k: v for k, v in self.train_counts.items() if k not in self.levels or v < 1}
        if bad:
            raise ValueError(
                f"train_counts={self.train_counts}: {bad} must name levels of {self.levels} "
                "with counts >= 1"
            )
        return self

    def train_count(self, level: int) -> int:
        return self.train_counts.get(level, self.train_per_level)


class FieldNames(Section):
    prompt: str = "prompt"  # column holding the prompt text
    answer: str = "answer"  # column holding the reference answer
    difficulty: str = "difficulty"  # optional column: numeric difficulty / level
    category: str = "category"  # optional column: category label
    id: str = "id"  # optional column: stable prompt id


class TaskConfig(Section):
    kind: Literal["arithmetic", "file", "hf"] = "arithmetic"  # synthetic, a data file, datasets
    arithmetic: ArithmeticTaskConfig = ArithmeticTaskConfig()
    path: str | None = None  # kind=file: JSONL or Parquet training prompts
    eval_path: str | None = None  # kind=file: held-out prompts (else split from path)
    dataset: str | None = None  # kind=hf: hub id ("openai/gsm8k") or local dataset folder
    dataset_config: str | None = None  # kind=hf: configuration name ("main")
    split: str = "train"  # kind=hf: training split
    eval_split: str | None = "test"  # kind=hf: held-out split (null: split off eval_fraction)
    max_train: int | None = Field(None, ge=1)  # keep at most this many training rows
    max_eval: int | None = Field(None, ge=1)  # keep at most this many held-out rows
    eval_fraction: float = Field(0.1, gt=0, lt=1)  # no held-out file/split: share split off
    fields: FieldNames = FieldNames()  # column names in the data
    answer_pattern: str | None = None  # regex; group 1 of its last match is the answer
    prompt_template: str = "{prompt}"  # str.format over the row; {prompt} is the prompt field
    seed: int = 1234  # seed of the data generation / split (separate from train.seed)

    @model_validator(mode="after")
    def _source_needed(self) -> TaskConfig:
        if self.kind == "file" and not self.path:
            raise ValueError("task.kind=file needs task.path (a .jsonl or .parquet file)")
        if self.kind == "hf" and not self.dataset:
            raise ValueError("task.kind=hf needs task.dataset (a hub id or a local folder)")
        if self.answer_pattern is not None:
            import re

            try:
                if re.compile(self.answer_pattern).groups < 1:
                    raise ValueError(
                        f"task.answer_pattern={self.answer_pattern!r} needs one capture group"
                    )
            except re.error as e:
                raise ValueError(
                    f"task.answer_pattern={self.answer_pattern!r} is not a regex: {e}"
                ) from None
        if "{prompt}" not in self.prompt_template:
            raise ValueError(
                f"task.prompt_template={self.prompt_template!r} must contain {{prompt}}"
            )
        return self
