"""``steerl pareto sweep|soup``: Pareto fronts from preference sweeps and weight soups.

Attached to the main app by :mod:`steerl.cli`, which imports this module only when a
``steerl pareto`` command runs (importing :mod:`steerl.pareto` imports torch).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from steerl.cli_errors import user_errors as _user_errors
from steerl.config import ConfigError

#: Its help text is given where :mod:`steerl.cli` attaches it.
pareto_app = typer.Typer(no_args_is_help=True)


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
