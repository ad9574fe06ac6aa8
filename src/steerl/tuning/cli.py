"""``steerl tune``: run a study (``steerl tune RECIPE``, the same as ``steerl tune run``),
rewrite its results (``report``) and export a trial as a recipe (``export``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from steerl.cli_errors import user_errors as _user_errors
from steerl.config import ConfigError


class _RunByDefault(TyperGroup):
    """``steerl tune RECIPE ...`` means ``steerl tune run RECIPE ...``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


tune_app = typer.Typer(
    cls=_RunByDefault,
    help="Hyperparameter search over recipe keys (Optuna; population-based training).",
    no_args_is_help=True,
)


@contextmanager
def _tune_errors() -> Iterator[None]:
    from steerl.tuning.study import TuneError

    with _user_errors():
        try:
            yield
        except (TuneError, ValueError) as e:
            if isinstance(e, ConfigError) or type(e) in (TuneError, ValueError):
                raise ConfigError(str(e)) from None
            raise


def _params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def _describe(frozen: Any) -> str:
    state = frozen.state.name.lower()
    params = _params(frozen.params)
    if state == "complete":
        what = ", ".join(f"{v:.4g}" for v in frozen.values)
    else:
        what = frozen.user_attrs.get("stopped_by") or frozen.user_attrs.get("error") or state
    secs = frozen.duration.total_seconds() if frozen.duration else 0.0
    return f"trial {frozen.number} {state}: {what} ({params}) {secs:.1f}s"


def _results_table(summary: dict[str, Any]) -> Table:
    names = [o["metric"] for o in summary["objectives"]]
    rows = summary.get("pareto") or ([summary["best"]] if summary.get("best") else [])
    title = "Pareto set of trials" if "pareto" in summary else "best trial"
    table = Table(title=title)
    for col in ("trial", *names, "parameters"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["trial"]), *[f"{v:.4g}" for v in r["values"]], _params(r["params"]))
    return table


@tune_app.command("run")
def tune_run(
    recipe: str | None = typer.Argument(
        None, help="Packaged recipe name or YAML file with a tune: section.", show_default=False
    ),
    overrides: list[str] | None = typer.Argument(None, help="Dotted overrides (key=value)."),
    trials: int | None = typer.Option(None, "--trials", "-n", help="Override tune.trials."),
    storage: str | None = typer.Option(
        None, "--storage", help="SQLAlchemy URL (default sqlite:///OUT/study.db)."
    ),
    study: str | None = typer.Option(None, "--study", help="Study name (default: recipe)."),
    out: str | None = typer.Option(None, "--out", help="Output folder (default runs/tune-R)."),
    workers: int = typer.Option(
        1, "--workers", "-j", min=1, help="Worker processes on this machine (same study)."
    ),
    worker_index: int = typer.Option(
        0, "--worker-index", min=0, hidden=True, help="Set by --workers for its processes."
    ),
) -> None:
    """Run (or resume) a study: trials until tune.trials are finished, then the results.

    Run the same command on several machines with one --storage postgresql://... URL to
    share the study. With tune.method=pbt, trains a population instead.
    """
    console = Console()
    with _tune_errors():
        if recipe is not None and "=" in recipe and not Path(recipe).is_file():
            overrides, recipe = [recipe, *(overrides or [])], None
        ov = [*(overrides or []), *([f"tune.trials={trials}"] if trials else [])]
        from steerl.tuning.study import prepare

        ctx = prepare(recipe, ov, out_dir=out, storage=storage, study=study)
        if ctx.tc.method == "pbt":
            from steerl.tuning.pbt import run_pbt

            result = run_pbt(ctx, on_round=lambda line: console.print(line, highlight=False))
            console.print(f"best member: {result['best']}", highlight=False)
            console.print(f"wrote {ctx.out_dir / 'pbt.json'}, lineage.png", highlight=False)
            return
        from steerl.tuning.results import write_results
        from steerl.tuning.study import work

        console.print(
            f"study {ctx.study_name!r} in {ctx.storage} ({ctx.tc.trials} trials, "
            f"{ctx.tc.sampler}, pruner {ctx.tc.effective_pruner})",
            highlight=False,
            soft_wrap=True,
        )
        extra = _spawn_workers(recipe, ov, ctx, workers - 1)
        try:
            done = work(
                ctx,
                on_trial=lambda t: console.print(_describe(t), highlight=False),
                worker=worker_index,
            )
        finally:
            failed = [p.wait() for p in extra]
        if any(failed):
            console.print(f"{sum(1 for r in failed if r)} worker(s) exited with an error")
        summary = write_results(done, ctx.out_dir)
    console.print(_results_table(summary))
    console.print(f"trials: {summary['trials']}", highlight=False)
    console.print(f"wrote {ctx.out_dir}/trials.csv and the results", highlight=False)


def _spawn_workers(recipe: str | None, overrides: list[str], ctx: Any, n: int) -> list:
    cmd = [
        sys.executable,
        "-m",
        "steerl",
        "tune",
        "run",
        *([recipe] if recipe else []),
        *overrides,
        "--out",
        str(ctx.out_dir),
        "--storage",
        ctx.storage,
        "--study",
        ctx.study_name,
    ]
    return [
        subprocess.Popen(
            [*cmd, "--worker-index", str(i + 1)],
            stdout=(ctx.out_dir / f"worker-{i + 1}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for i in range(n)
    ]


def _load(out: Path, storage: str | None, study: str | None) -> Any:
    import optuna

    from steerl.tuning.study import load_context

    url, name = load_context(out, storage, study)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=url)
    except KeyError:
        raise ConfigError(f"no study {name!r} in {url}") from None


@tune_app.command("report")
def tune_report(
    out: Path = typer.Argument(..., help="The study's output folder (holds tune.json)."),
    storage: str | None = typer.Option(None, "--storage", help="Override the storage URL."),
    study: str | None = typer.Option(None, "--study", help="Override the study name."),
) -> None:
    """Rewrite trials.csv, best.json / pareto.json and the plots from the study storage."""
    console = Console()
    with _tune_errors():
        from steerl.tuning.results import write_results

        summary = write_results(_load(out, storage, study), out)
    console.print(_results_table(summary))
    console.print(f"trials: {summary['trials']}", highlight=False)


@tune_app.command("export")
def tune_export(
    out: Path = typer.Argument(..., help="The study's output folder (holds tune.json)."),
    trial: int | None = typer.Option(
        None, "--trial", help="Trial number (default: best; the knee for several objectives)."
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Recipe file to write."),
    storage: str | None = typer.Option(None, "--storage", help="Override the storage URL."),
    study: str | None = typer.Option(None, "--study", help="Override the study name."),
) -> None:
    """Write the recipe of a trial: the study's base recipe plus that trial's parameters."""
    with _tune_errors():
        from steerl.tuning.results import export_recipe

        text, number = export_recipe(_load(out, storage, study), trial)
        path = output or out / f"trial-{number}.yaml"
        path.write_text(text)
    Console().print(
        f"wrote {path} (trial {number}); train it with: steerl train {path}",
        highlight=False,
        soft_wrap=True,
    )
