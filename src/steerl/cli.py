"""The ``steerl`` command line: ``train``, ``eval``, ``recipes``, ``list``, ``report``,
``curriculum profile``, ``pareto sweep|soup`` and ``tune run|report|export``.

Mistakes the user can fix (a bad recipe or override, an unknown component, a model that will
not load, a reward that keeps failing, a missing file) end with a red ``error: ...`` on stderr
and exit code 2; anything else is a bug and keeps its traceback. Heavy modules (torch,
transformers) are imported inside the commands so ``steerl --help`` stays fast; for the same
reason the ``curriculum`` and ``pareto`` sub-apps (``steerl.curriculum.cli``,
``steerl.pareto.cli``) are imported only when one of their commands runs. ``tune`` is
``steerl.tuning.cli``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from steerl.cli_errors import user_errors as _user_errors
from steerl.config import ConfigError, list_recipes, load_config
from steerl.registry import Registry, RegistryError

app = typer.Typer(
    name="steerl",
    help="RL post-training (GRPO) of Hugging Face causal LMs.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _level_key(level: str) -> tuple[int, int, str]:
    return (0, int(level), "") if str(level).isdigit() else (1, 0, str(level))


def accuracy_table(
    before: dict[str, float] | None,
    after: dict[str, float] | None,
    after_label: str = "after RL",
) -> Table:
    """Greedy accuracy per difficulty level: after warm-up, ``after_label``, and the change."""
    before, after = before or {}, after or {}
    levels = sorted({*before, *after}, key=_level_key)
    table = Table(title="greedy accuracy on held-out prompts")
    table.add_column("level")
    for name in ("after warm-up", after_label, "change (points)"):
        table.add_column(name, justify="right")
    for lv in levels:
        b, a = before.get(lv), after.get(lv)
        change = "—" if a is None or b is None else f"{100 * (a - b):+.1f}"
        table.add_row(str(lv), _pct(b), _pct(a), change)
    return table


# --------------------------------------------------------------------------- train
def _resolve_train_args(recipe: str | None, overrides: list[str]) -> tuple[Any, Path | None]:
    """(config, run directory to resume or None) from the positional arguments."""
    if recipe is not None and "=" in recipe and not Path(recipe).is_file():
        overrides, recipe = [recipe, *overrides], None
    if recipe is not None and Path(recipe).is_dir():
        run_dir = Path(recipe)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(
                f"{recipe!r} is a directory without config.yaml, so not a run directory. "
                "Pass a packaged recipe name, a YAML file or a run directory to resume."
            )
        return load_config(run_dir / "config.yaml", overrides), run_dir
    return load_config(recipe, overrides), None


@app.command()
def train(
    recipe: str | None = typer.Argument(
        None,
        help="Packaged recipe name, YAML file, or a run directory to resume (default: default).",
        show_default=False,
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="Dotted overrides such as rollout.group_size=16 rewards.0.weight=2."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a policy: SFT warm-up, then GRPO; resumes a run directory from its checkpoint."""
    console = Console()
    with _user_errors():
        overrides = [*(overrides or []), *(["logging.progress=false"] if quiet else [])]
        cfg, run_dir = _resolve_train_args(recipe, overrides)
        from steerl import distributed as ddp

        ddp.init(cfg.train.distributed, cfg.model.device)  # under torchrun: join the group
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(cfg.train.out_dir or f"runs/{cfg.recipe}-{stamp}")
            run_dir = Path(ddp.broadcast_object(str(run_dir)))  # rank 0's stamp on every rank

        from steerl.checkpoint import latest_checkpoint
        from steerl.trainer import Trainer

        last = latest_checkpoint(run_dir)
        if last is not None and ddp.is_main():
            Console(stderr=True).print(f"resuming {run_dir} from {last.name}", highlight=False)
        trainer = Trainer(cfg, run_dir)
        finished = False
        try:
            summary = trainer.train()
            finished = True
        except KeyboardInterrupt:
            Console(stderr=True).print(
                f"interrupted; resume with: steerl train {run_dir}", style="yellow"
            )
            raise typer.Exit(130) from None
        finally:
            main = ddp.is_main()
            ddp.shutdown(together=finished)
        if not main:
            if finished:
                # a torchrun worker with nothing left to write: end without the interpreter's
                # teardown, where rank 1 intermittently aborted in a C++ destructor ("terminate
                # called without an active exception", twice in CI after a finished run)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
            return

    console.print(accuracy_table(summary.get("warmup"), summary.get("final")))
    if not summary.get("completed", summary.get("final") is not None):
        console.print(f"stopped before the end; resume with: steerl train {run_dir}")
    console.print(f"wall seconds: {summary.get('wall_seconds', 0):.1f}", highlight=False)
    if summary.get("rl_steps"):
        tps = summary.get("generate_tokens_per_s", 0.0)
        console.print(f"rollout: {tps:,.0f} generated tokens/s", highlight=False)
    console.print(f"run directory: {run_dir}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- eval
def _checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    for p in (Path(checkpoint), run_dir / "checkpoints" / checkpoint):
        if (p / "trainer_state.json").is_file():
            return p
    raise FileNotFoundError(
        f"checkpoint {checkpoint!r} not found (expected a folder with trainer_state.json, "
        f"or the name of one in {run_dir / 'checkpoints'})"
    )


@app.command("eval")
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory (holding config.yaml)."),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="Checkpoint folder (or its name, e.g. step_40); default: newest."
    ),
) -> None:
    """Greedy accuracy per level of a run's checkpoint; writes eval.json in the run directory."""
    with _user_errors():
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory: no config.yaml in it")
        cfg = load_config(cfg_path)

        from steerl import checkpoint as ckpt
        from steerl.trainer import Trainer, TrainerState

        trainer = Trainer(cfg, run_dir)
        if checkpoint is not None:
            path = _checkpoint_path(run_dir, checkpoint)
            state = ckpt.load_checkpoint(path, trainer.model, {})
            trainer.state = TrainerState(**state["trainer"])
        elif trainer.resume():
            path = ckpt.latest_checkpoint(run_dir)
        else:
            raise FileNotFoundError(f"no complete checkpoint in {run_dir / 'checkpoints'}")
        accuracy = trainer.evaluate()

    result = {
        "run_dir": str(run_dir),
        "checkpoint": str(path),
        "step": trainer.state.global_step,
        "accuracy": accuracy,
        "warmup": trainer.state.warmup_eval,
    }
    (run_dir / "eval.json").write_text(json.dumps(result, indent=1))
    console = Console()
    console.print(accuracy_table(trainer.state.warmup_eval, accuracy, f"{path.name}"))
    console.print(f"wrote {run_dir / 'eval.json'}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- listings
@app.command()
def recipes() -> None:
    """List the packaged recipes."""
    table = Table(title="packaged recipes (steerl train NAME)")
    table.add_column("name", style="bold")
    table.add_column("description")
    for name, description in list_recipes().items():
        table.add_row(name, description)
    Console().print(table)


def _kind_names(kind: str) -> set[str]:
    names = {kind, f"{kind}s", f"{kind}es"}
    if kind.endswith("um"):
        names.add(kind[:-2] + "a")  # curriculum -> curricula
    return names


@app.command("list")
def list_components(
    kind: str = typer.Argument(..., help="rewards, losses, balancers, curricula, schedules, ..."),
) -> None:
    """List the registered components of a kind, with a one-line description each."""
    import steerl.curriculum
    import steerl.losses
    import steerl.objectives
    import steerl.rewards
    import steerl.schedules  # noqa: F401 - importing registers the components

    with _user_errors():
        kinds = Registry.kinds()
        found = [k for k in kinds if kind.lower() in _kind_names(k)]
        if not found:
            raise RegistryError(
                f"unknown kind {kind!r}. Available kinds: {', '.join(sorted(kinds))} "
                "(singular or plural)."
            )
    registry = kinds[found[0]]
    table = Table(title=f"registered {found[0]} components")
    table.add_column("name", style="bold")
    table.add_column("description")
    for entry in registry.entries():
        table.add_row(entry.name, entry.description)
    Console().print(table)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory.")) -> None:
    """(Re)build report.html (and its PNG plots) in a run directory."""
    with _user_errors():
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
        from steerl.report import build_report

        out = build_report(run_dir)
    Console().print(f"wrote {out}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- sub-apps
class _LazySubApp(TyperGroup):
    """A sub-app that ``steerl --help`` lists from its name and help alone: the module defining
    it (``import_path``, ``module:attribute``) is imported only when a command under it is
    parsed, so that importing ``steerl.cli`` does not import that module's package."""

    import_path = ""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        module, attribute = self.import_path.split(":")
        group = typer.main.get_group(getattr(importlib.import_module(module), attribute))
        group.name, group.help = self.name, self.help  # the help text is written here only
        return group.make_context(info_name, args, parent=parent, **extra)


def _add_lazy_typer(name: str, import_path: str, help: str) -> None:
    """``app.add_typer`` of the Typer at ``import_path``, imported when ``steerl NAME`` runs.

    ``help`` is the sub-app's help text, in ``steerl --help`` and ``steerl NAME --help``.
    """
    cls = type(f"_Lazy_{name}", (_LazySubApp,), {"import_path": import_path})
    app.add_typer(typer.Typer(), name=name, help=help, cls=cls)


# steerl.curriculum and steerl.pareto import torch on import: attached lazily.
_add_lazy_typer(
    "curriculum",
    "steerl.curriculum.cli:curriculum_app",
    "Curriculum tools: measure prompt difficulty with a policy.",
)
_add_lazy_typer(
    "pareto",
    "steerl.pareto.cli:pareto_app",
    "Pareto fronts: preference sweeps and weight soups over several rewards.",
)


# --------------------------------------------------------------------------- tune
from steerl.tuning.cli import tune_app  # noqa: E402

app.add_typer(tune_app, name="tune")


def main() -> None:
    app(prog_name="steerl")
