"""The ``steerl`` command line: ``train``, ``eval``, ``recipes``, ``list``, ``report``,
``curriculum profile``, ``pareto sweep|soup`` and ``tune run|report|export``.

Mistakes the user can fix (a bad recipe or override, an unknown component, a model that will
not load, a reward that keeps failing, a missing file) end with a red ``error: ...`` on stderr
and exit code 2; anything else is a bug and keeps its traceback. Heavy modules (torch,
transformers) are imported inside the commands so ``steerl --help`` stays fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from steerl.config import ConfigError, list_recipes, load_config
from steerl.registry import Registry, RegistryError

app = typer.Typer(
    name="steerl",
    help="RL post-training (GRPO) of Hugging Face causal LMs.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

EXIT_USER_ERROR = 2


def _is_user_error(e: Exception) -> bool:
    """A mistake the user can fix (as opposed to a bug in steerl or in their code)."""
    if isinstance(e, (ConfigError, RegistryError, FileNotFoundError)):
        return True
    from steerl.models import ModelLoadError  # heavy imports: only for the remaining cases
    from steerl.rewards import RewardFailure
    from steerl.stability import StabilityError

    return isinstance(e, (ModelLoadError, RewardFailure, StabilityError))


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the user's mistakes into ``error: ...`` and exit code 2; re-raise anything else."""
    try:
        yield
    except Exception as e:
        if not _is_user_error(e):
            raise
        Console(stderr=True).print(
            f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True
        )
        raise typer.Exit(EXIT_USER_ERROR) from None


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
        try:
            summary = trainer.train()
        except KeyboardInterrupt:
            Console(stderr=True).print(
                f"interrupted; resume with: steerl train {run_dir}", style="yellow"
            )
            raise typer.Exit(130) from None
        finally:
            main = ddp.is_main()
            ddp.shutdown()
        if not main:
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


# --------------------------------------------------------------------------- curriculum
curriculum_app = typer.Typer(
    help="Curriculum tools: measure prompt difficulty with a policy.", no_args_is_help=True
)
app.add_typer(curriculum_app, name="curriculum")


@curriculum_app.command("profile")
def curriculum_profile(
    recipe: str | None = typer.Argument(
        None,
        help="Packaged recipe name or YAML file (default: --run's config, else default).",
        show_default=False,
    ),
    overrides: list[str] | None = typer.Argument(None, help="Dotted overrides (key=value)."),
    out: Path = typer.Option(..., "--out", help="JSONL file of {id, difficulty} (appended)."),
    k: int = typer.Option(8, "--k", min=1, help="Completions sampled per prompt."),
    run: Path | None = typer.Option(
        None,
        "--run",
        help="Sample with this run's newest checkpoint instead of the recipe's model.",
    ),
    chunk: int = typer.Option(32, "--chunk", min=1, help="Prompts per generation batch."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Profile the first N prompts."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    allow_untrained: bool = typer.Option(
        False,
        "--allow-untrained",
        help="Without --run, profile the built-in tiny model anyway (random weights).",
    ),
) -> None:
    """Write each training prompt's difficulty (1 - pass rate over k samples) to a JSONL file.

    Resumable: ids already in --out are skipped. Train on it with
    curriculum.difficulty_file=FILE (e.g. curriculum.name=pacing). Without --run the
    recipe's model is profiled as loaded, before any warm-up: the built-in tiny model is
    refused (random weights) unless --allow-untrained.
    """
    with _user_errors():
        if recipe is not None and "=" in recipe and not Path(recipe).is_file():
            overrides, recipe = [recipe, *(overrides or [])], None
        if recipe is None and run is not None:
            if not (run / "config.yaml").is_file():
                raise FileNotFoundError(f"{run} is not a run directory: no config.yaml in it")
            cfg = load_config(run / "config.yaml", overrides or [])
        else:
            cfg = load_config(recipe, overrides or [])

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        from steerl.curriculum.profile import profile_difficulty, untrained_warning

        note = untrained_warning(cfg, run)
        if note:
            Console(stderr=True).print(f"[yellow]warning:[/] {note}", highlight=False)

        bar = Progress(
            "[bold]profiling",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=quiet,
        )
        with bar:
            task = bar.add_task("profile", total=None)

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            res = profile_difficulty(
                cfg,
                out,
                k=k,
                run_dir=run,
                chunk=chunk,
                limit=limit,
                on_progress=advance,
                allow_untrained=allow_untrained,
            )
    console = Console()
    rate = res["mean_pass_rate"]
    shown = "—" if rate is None else f"{100 * rate:.1f}%"
    console.print(
        f"profiled {res['written']} prompts ({res['already']} already in the file, "
        f"{res['unscored']} unscored) of {res['prompts']}; mean pass rate {shown}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"train with: curriculum.difficulty_file={out}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- pareto
pareto_app = typer.Typer(
    help="Pareto fronts: preference sweeps and weight soups over several rewards.",
    no_args_is_help=True,
)
app.add_typer(pareto_app, name="pareto")


@contextmanager
def _pareto_errors() -> Iterator[None]:
    """``_user_errors`` plus the sweep's and the soups' own user errors (exit code 2)."""
    from steerl.pareto.soups import SoupError
    from steerl.pareto.sweep import SweepError

    with _user_errors():
        try:
            yield
        except (SweepError, SoupError) as e:
            raise ConfigError(str(e)) from None


def _points_table(result: dict[str, Any], title: str, first: str) -> Table:
    names = result["objectives"]
    table = Table(title=title)
    for col in ("#", first, *names, "front", "angle (deg)"):
        table.add_column(col, justify="right")
    for i, r in enumerate(result["points"]):
        pref = "(" + ", ".join(f"{x:.2f}" for x in r["preference"]) + ")"
        angle = "—" if r.get("angle_deg") is None else f"{r['angle_deg']:.1f}"
        table.add_row(
            str(i),
            pref,
            *[f"{r['objectives'][n]:.3f}" for n in names],
            "*" if r["on_front"] else "",
            angle,
        )
    return table


@pareto_app.command("sweep")
def pareto_sweep(
    recipe: str | None = typer.Argument(
        None, help="Packaged recipe name or YAML file (default: default).", show_default=False
    ),
    overrides: list[str] | None = typer.Argument(None, help="Dotted overrides (key=value)."),
    weights: str = typer.Option(
        ..., "--weights", help="Preference grid: simplex:N (Das-Dennis, N divisions)."
    ),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Runs trained in parallel."),
    out: Path = typer.Option(Path("pareto"), "--out", help="Output folder (runs under runs/)."),
    ref: str | None = typer.Option(
        None, "--ref", help="Hypervolume reference point a,b,... (default: min - 10% range)."
    ),
    from_warmup: Path | None = typer.Option(
        None,
        "--from-warmup",
        help="Finished run directory (e.g. train.steps=0) copied into every point and resumed.",
    ),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="SQLAlchemy URL: run the points as trials of a shared Optuna study (many machines).",
    ),
    study: str | None = typer.Option(
        None, "--study", help="Study name with --storage (default: sweep-<recipe>)."
    ),
) -> None:
    """Train one run per preference vector, evaluate every reward, write the Pareto front.

    Writes OUT/pareto.json, OUT/pareto.csv and OUT/front.png. Resumable: completed runs are
    not retrained.
    """
    console = Console()
    with _pareto_errors():
        if recipe is not None and "=" in recipe and not Path(recipe).is_file():
            overrides, recipe = [recipe, *(overrides or [])], None
        from steerl.pareto.sweep import parse_weights, sweep

        divisions = parse_weights(weights)

        def report_point(i: int, obj: dict[str, float], trained: bool) -> None:
            shown = ", ".join(f"{k}={v:.3f}" for k, v in obj.items())
            what = "trained" if trained else "reused"
            console.print(f"p{i} ({what}): {shown}", highlight=False, soft_wrap=True)

        result = sweep(
            recipe,
            overrides or [],
            divisions,
            out,
            jobs=jobs,
            ref=ref,
            from_warmup=from_warmup,
            on_point=report_point,
            storage=storage,
            study=study,
        )
    console.print(_points_table(result, f"Pareto sweep ({weights})", "preference"))
    console.print(
        f"hypervolume {result['hypervolume']:.4g} (ref {result['ref']}); knee: #{result['knee']}",
        highlight=False,
    )
    console.print(f"wrote {out / 'pareto.json'}, pareto.csv", highlight=False, soft_wrap=True)
    if result.get("plot"):
        console.print(f"wrote {result['plot']}", highlight=False, soft_wrap=True)


@pareto_app.command("soup")
def pareto_soup(
    checkpoints: list[Path] = typer.Argument(
        ..., help="Checkpoint folders, .safetensors files or run directories (newest)."
    ),
    steps: int = typer.Option(4, "--steps", min=1, help="Mixtures: simplex(#checkpoints, N)."),
    recipe: str = typer.Option(
        ..., "--recipe", help="Recipe (name, YAML or run directory) that builds the evaluator."
    ),
    override: list[str] | None = typer.Option(
        None, "--set", help="Dotted override of the recipe (repeatable)."
    ),
    out: Path = typer.Option(Path("soup"), "--out", help="Output folder."),
) -> None:
    """Interpolate checkpoint weights (rewarded soups) and evaluate every mixture.

    Writes OUT/soup.json, OUT/soup.csv and OUT/front.png (with OUT/pareto.json's points too).
    """
    console = Console()
    with _pareto_errors():
        from steerl.pareto.sweep import soup_points

        result = soup_points(checkpoints, steps, recipe, override or [], out)
    console.print(_points_table(result, "weight soups", "mixture"))
    console.print(f"wrote {out / 'soup.json'}, soup.csv", highlight=False, soft_wrap=True)
    if result.get("plot"):
        console.print(f"wrote {result['plot']}", highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- tune
from steerl.tuning.cli import tune_app  # noqa: E402  (it uses _user_errors defined above)

app.add_typer(tune_app, name="tune")


def main() -> None:
    app(prog_name="steerl")
