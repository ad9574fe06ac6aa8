"""``steerl curriculum profile``: write each training prompt's difficulty under a policy.

Attached to the main app by :mod:`steerl.cli`, which imports this module only when a
``steerl curriculum`` command runs (importing :mod:`steerl.curriculum` imports torch).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from steerl.cli_errors import user_errors as _user_errors
from steerl.config import load_config

#: Its help text is given where :mod:`steerl.cli` attaches it.
curriculum_app = typer.Typer(no_args_is_help=True)


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
