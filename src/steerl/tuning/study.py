"""Optuna studies over recipe keys: one trial = one normal steerl run directory.

``prepare`` resolves the recipe, checks the search space and writes ``OUT/tune.json`` (study
name and storage URL, read back by ``steerl tune export``/``report``). ``work`` is one worker:
it asks the study for trials until the study holds ``tune.trials`` finished ones (completed,
pruned, or failed by the run itself), counting those other workers are running, so the same
command on several machines against one PostgreSQL URL shares the work. A worker that dies
leaves its trial RUNNING without a heartbeat; after ``2 * tune.heartbeat_s`` the next worker
to ask marks it failed and re-queues its parameters (``tune.retries`` times).

Trials report their intermediate evaluation to the pruner (``train.eval_every`` decides how
often) and are stopped early when it says so, or when ``tune.threshold`` is violated.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerl.config import Config, ConfigError, load_config
from steerl.tuning.space import check_space
from steerl.tuning.spec import TuneConfig

TUNE_FILE = "tune.json"
MAX_ERRORS_IN_A_ROW = 3


class TuneError(ValueError):
    """A mistake the user can fix (bad study directory, mismatching study, failing trials)."""


@dataclass
class TuneContext:
    cfg: Config  # the recipe with its overrides (its ``tune`` section drives the search)
    base: dict[str, Any]  # the resolved recipe as data: every trial starts from a copy
    out_dir: Path
    storage: str
    study_name: str

    @property
    def tc(self) -> TuneConfig:
        return self.cfg.tune

    def trial_dir(self, number: int) -> Path:
        return self.out_dir / "trials" / f"{number:04d}"


def prepare(
    recipe: str | None,
    overrides: list[str],
    out_dir: str | None = None,
    storage: str | None = None,
    study: str | None = None,
) -> TuneContext:
    """Load and check the recipe and its search space; decide out_dir, storage and study."""
    cfg = load_config(recipe, overrides)
    tc = cfg.tune
    if not tc.space:
        raise ConfigError(
            "tune.space is empty: name at least one key to search, e.g. "
            "tune.space={optim.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}}"
        )
    base = cfg.model_dump(mode="json")
    check_space(base, tc.space)
    for c in [*tc.constraints, *([tc.threshold] if tc.threshold else [])]:
        if c.metric.startswith("eval/reward/"):
            _check_reward_metric(cfg, c.metric)
    for o in tc.objectives:
        if o.metric.startswith("eval/reward/"):
            _check_reward_metric(cfg, o.metric)
    out = Path(out_dir or tc.out_dir or f"runs/tune-{cfg.recipe}")
    out.mkdir(parents=True, exist_ok=True)
    url = storage or tc.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = study or tc.study or cfg.recipe
    if tc.from_warmup:
        check_warmup(Path(tc.from_warmup), cfg)
    (out / TUNE_FILE).write_text(json.dumps({"study": name, "storage": url}, indent=1))
    return TuneContext(cfg, base, out, url, name)


def _check_reward_metric(cfg: Config, metric: str) -> None:
    label = metric.removeprefix("eval/reward/")
    labels = [r.label for r in cfg.rewards]
    if label not in labels:
        raise ConfigError(f"tune metric {metric!r}: no reward labelled {label!r}; have {labels}")


def check_warmup(path: Path, cfg: Config) -> None:
    """A finished warm-up run whose model, task and warm-up match the recipe's."""
    if not (path / "config.yaml").is_file() or not (path / "checkpoints").is_dir():
        raise ConfigError(
            f"tune.from_warmup={str(path)!r} is not a finished run directory (config.yaml and "
            "checkpoints/ expected); make one with: steerl train RECIPE train.steps=0 "
            "train.out_dir=DIR"
        )
    warm = load_config(path / "config.yaml")
    for section in ("model", "task", "warmup"):
        a, b = getattr(warm, section).model_dump(), getattr(cfg, section).model_dump()
        if a != b:
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            raise ConfigError(
                f"tune.from_warmup={str(path)!r} was trained with a different {section} "
                f"section (keys {diff} differ from the recipe's)"
            )


# --------------------------------------------------------------------------- Optuna objects
def make_storage(ctx: TuneContext) -> Any:
    """An RDB storage with heartbeats; a worker that dies has its trial failed and retried."""
    from steerl.tuning.storage import StorageError, rdb_storage

    try:
        return rdb_storage(ctx.storage, ctx.tc.heartbeat_s, ctx.tc.retries)
    except StorageError as e:
        raise TuneError(str(e)) from None


def _constraints(trial: Any) -> list[float]:
    return list(trial.user_attrs.get("constraints", [0.0]))


def has_set_constraint() -> bool:
    """Optuna >= 5 reads constraints from the trial (older versions: a sampler argument)."""
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def make_sampler(tc: TuneConfig, seed_offset: int = 0) -> Any:
    """The sampler; ``tune.seed`` shifted by ``seed_offset`` (see ``open_study``)."""
    import optuna

    opts = dict(tc.sampler_options)
    if tc.seed is not None:
        opts.setdefault("seed", tc.seed + seed_offset)
    if tc.constraints and tc.sampler != "random" and not has_set_constraint():
        opts.setdefault("constraints_func", _constraints)  # Optuna < 5: a sampler argument
    kinds = {
        "tpe": optuna.samplers.TPESampler,
        "gp": optuna.samplers.GPSampler,
        "random": optuna.samplers.RandomSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
    }
    try:
        return kinds[tc.sampler](**opts)
    except TypeError as e:
        msg = f"tune.sampler_options={tc.sampler_options} for {tc.sampler}: {e}"
        raise ConfigError(msg) from None


def make_pruner(tc: TuneConfig) -> Any:
    import optuna

    opts = dict(tc.pruner_options)
    kind = tc.effective_pruner
    if kind == "percentile":
        opts.setdefault("percentile", 25.0)
    kinds = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    try:
        return kinds[kind](**opts)
    except TypeError as e:
        raise ConfigError(f"tune.pruner_options={tc.pruner_options} for {kind}: {e}") from None


def fingerprint(ctx: TuneContext) -> str:
    """What makes two invocations the same study: the recipe (without tune.trials etc.),
    the space and the objectives. Keys left at their defaults are not part of it, so a
    newer steerl with more config keys still resumes an older study."""
    base = ctx.cfg.model_dump(mode="json", exclude_defaults=True, exclude={"tune"})
    tc = ctx.tc
    key = {
        "base": base,
        "space": {k: p.model_dump() for k, p in tc.space.items()},
        "objectives": [o.model_dump() for o in tc.objectives],
        "constraints": [c.model_dump() for c in tc.constraints],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def open_study(ctx: TuneContext, storage: Any | None = None, worker: int = 0) -> Any:
    """Create or load (``load_if_exists``) the study; refuse one made from another recipe.

    A seeded sampler is re-seeded from ``(tune.seed, trials already in the study, worker)``:
    a resumed study, or a second worker, does not replay the proposals that the same seed
    already made, and seeds 0 and 1 do not share a stream (a fresh single-worker study stays
    reproducible).
    """
    import optuna

    tc = ctx.tc
    study = optuna.create_study(
        study_name=ctx.study_name,
        storage=storage if storage is not None else make_storage(ctx),
        sampler=make_sampler(tc),
        pruner=make_pruner(tc),
        directions=tc.directions,
        load_if_exists=True,
    )
    if tc.seed is not None:
        n = len(study.get_trials(deepcopy=False))
        if n or worker:  # deterministic, and unrelated to the streams of other seeds
            mixed = random.Random(f"{tc.seed}/{n}/{worker}").randrange(2**31) - tc.seed
            study.sampler = make_sampler(tc, mixed)
    if [d.name.lower() for d in study.directions] != tc.directions:
        raise TuneError(
            f"study {ctx.study_name!r} in {ctx.storage} optimises "
            f"{[d.name.lower() for d in study.directions]}, the recipe {tc.directions}; "
            "pick another --study name"
        )
    fp = fingerprint(ctx)
    have = study.user_attrs.get("steerl.fingerprint")
    if have is None:
        study.set_user_attr("steerl.fingerprint", fp)
        study.set_user_attr("steerl.base", {k: v for k, v in ctx.base.items() if k != "tune"})
        study.set_user_attr("steerl.tune", tc.model_dump(mode="json"))
    elif have != fp:
        raise TuneError(
            f"study {ctx.study_name!r} in {ctx.storage} was started from a different recipe, "
            "search space or objectives; resume it with the same ones or pick another --study"
        )
    return study


def work(
    ctx: TuneContext,
    on_trial: Callable[[Any], None] | None = None,
    max_trials: int | None = None,
    worker: int = 0,
) -> Any:
    """One worker: run trials until the study is complete (or ``max_trials`` of our own).

    ``worker`` numbers the processes of one ``--workers N`` invocation (seed offsets)."""
    import optuna

    from steerl.tuning.trial import accounted, run_trial  # trial.py builds on this module

    storage = make_storage(ctx)
    study = open_study(ctx, storage, worker)
    errors: list[str] = []
    ran = 0

    def after(study: Any, frozen: Any) -> None:
        if frozen.user_attrs.get("surplus"):
            return
        if frozen.state.name == "FAIL" and "error" in frozen.user_attrs:
            errors.append(frozen.user_attrs["error"])
        elif frozen.state.name in ("COMPLETE", "PRUNED"):
            errors.clear()
        if on_trial is not None:
            on_trial(frozen)

    while max_trials is None or ran < max_trials:
        optuna.storages.fail_stale_trials(study)
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        if accounted(study) >= ctx.tc.trials and not waiting:
            break
        study.optimize(
            lambda t: run_trial(ctx, t),
            n_trials=1,
            catch=(Exception,),
            callbacks=[after],
            gc_after_trial=False,
        )
        ran += 1
        if len(errors) >= MAX_ERRORS_IN_A_ROW:
            raise TuneError(
                f"{len(errors)} trials in a row failed; the last one: {errors[-1]}\n"
                f"(run directories under {ctx.out_dir / 'trials'})"
            )
    return study


def load_context(out_dir: str | Path, storage: str | None = None, study: str | None = None):
    """(storage URL, study name) of a tune output directory (its ``tune.json``)."""
    out = Path(out_dir)
    info_path = out / TUNE_FILE
    info: dict[str, Any] = {}
    if info_path.is_file():
        info = json.loads(info_path.read_text())
    elif storage is None:
        raise TuneError(f"{out} is not a tune output directory (no {TUNE_FILE}); pass --storage")
    url = storage or info["storage"]
    name = study or info.get("study")
    if name is None:
        raise TuneError("pass --study: the study name is not known")
    return url, name
