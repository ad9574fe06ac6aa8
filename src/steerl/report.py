"""A static HTML report of a run: PNG curves from ``metrics.jsonl`` plus ``summary.json``.

Plots are skipped when their metrics are absent; nothing here raises on a missing key
or file (a missing ``metrics.jsonl`` just gives a report without plots).
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

from steerl.logging import METRICS_FILE, read_metrics

Series = dict[str, tuple[list[float], list[float]]]

_LEVEL_KEY = re.compile(r"^eval/accuracy/level_(\d+)$")


def _series(records: list[dict[str, Any]]) -> Series:
    """key -> (steps, values) for numeric metrics; null (non-finite) values become NaN."""
    out: Series = {}
    for rec in records:
        step = rec.get("step")
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            continue
        for k, v in rec.items():
            if k == "step" or isinstance(v, bool):
                continue
            if v is None:
                v = math.nan
            if not isinstance(v, (int, float)):
                continue
            xs, ys = out.setdefault(k, ([], []))
            xs.append(float(step))
            ys.append(float(v))
    # keys that only ever held null are not metrics worth plotting
    return {k: s for k, s in out.items() if any(math.isfinite(y) for y in s[1])}


def _rl_start(records: list[dict[str, Any]]) -> float | None:
    """First step logged with phase "rl", if a "warmup" phase came before it."""
    seen_warmup = False
    for rec in records:
        phase = rec.get("phase")
        if phase == "warmup":
            seen_warmup = True
        elif phase == "rl" and seen_warmup and isinstance(rec.get("step"), (int, float)):
            return float(rec["step"])
    return None


def _plot(
    path: Path,
    title: str,
    lines: list[tuple[str, tuple[list[float], list[float]], dict[str, Any]]],
    ylabel: str,
    rl_start: float | None,
    ylim: tuple[float, float] | None = None,
) -> bool:
    if not lines:
        return False
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        for label, (xs, ys), style in lines:
            ax.plot(xs, ys, label=label, **style)
        if rl_start is not None:
            ax.axvline(rl_start, color="grey", linestyle=":", linewidth=1, label="RL starts")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return True


def _plot_stats(path: Path, series: Series) -> bool:
    keys = [k for k in ("train/entropy", "train/grad_norm", "train/lr") if k in series]
    if not keys:
        return False
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    try:
        for ax, k in zip(axes[0], keys, strict=True):
            xs, ys = series[k]
            ax.plot(xs, ys)
            ax.set_title(k)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return True


_SHARE_KEY = re.compile(r"^curriculum/level_(\d+)/share$")


def plot_curriculum(path: Path, series: Series) -> bool:
    """Heat map of ``curriculum/level_<k>/share`` (rows: levels, columns: steps)."""
    levels = sorted((int(m.group(1)), k) for k in series if (m := _SHARE_KEY.match(k)))
    if not levels:
        return False
    import matplotlib.pyplot as plt
    import numpy as np

    steps = sorted({x for _, k in levels for x in series[k][0]})
    col = {x: i for i, x in enumerate(steps)}
    grid = np.full((len(levels), len(steps)), np.nan)
    for row, (_, k) in enumerate(levels):
        for x, y in zip(*series[k]):
            grid[row, col[x]] = y
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * len(levels)))
    try:
        im = ax.imshow(
            grid,
            aspect="auto",
            origin="lower",
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
            extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, len(levels) - 0.5),
        )
        ax.set_yticks(range(len(levels)), [str(lv) for lv, _ in levels])
        ax.set_xlabel("step")
        ax.set_ylabel("level")
        ax.set_title("Curriculum: share of sampled prompts per level")
        fig.colorbar(im, ax=ax, label="share")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return True


def _make_plots(run_dir: Path, records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Write the PNGs; returns (file name, caption) of those written."""
    series = _series(records)
    rl_start = _rl_start(records)
    written: list[tuple[str, str]] = []

    reward = []
    if "train/reward" in series:
        reward.append(("train/reward", series["train/reward"], {"linewidth": 2}))
    for k in sorted(series):
        if k.startswith("train/reward/"):
            reward.append((k.removeprefix("train/reward/"), series[k], {"alpha": 0.7}))
    if _plot(run_dir / "reward.png", "Reward", reward, "mean reward", None):
        written.append(("reward.png", "Mean combined reward and each reward term"))

    levels = sorted((int(m.group(1)), k) for k in series if (m := _LEVEL_KEY.match(k)) is not None)
    acc = [(f"level {lv}", series[k], {"marker": "o"}) for lv, k in levels]
    if _plot(
        run_dir / "accuracy.png", "Greedy eval accuracy", acc, "accuracy", None, (-0.02, 1.02)
    ):
        written.append(("accuracy.png", "Greedy accuracy on held-out prompts, per level"))

    kl = [("train/kl", series["train/kl"], {})] if "train/kl" in series else []
    if _plot(run_dir / "kl.png", "KL to reference", kl, "KL", None):
        written.append(("kl.png", "Estimated KL(policy || reference)"))

    loss = [(k, series[k], {}) for k in ("warmup/loss", "train/loss") if k in series]
    if _plot(run_dir / "loss.png", "Loss", loss, "loss", rl_start):
        written.append(("loss.png", "Warm-up (SFT) loss and RL policy loss"))

    if _plot_stats(run_dir / "stats.png", series):
        written.append(("stats.png", "Entropy, gradient norm and learning rate"))

    if plot_curriculum(run_dir / "curriculum.png", series):
        written.append(("curriculum.png", "Curriculum: share of sampled prompts per level"))
    return written


# --------------------------------------------------------------------------- HTML
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _acc(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def _level_sort(k: str) -> tuple[int, float, str]:
    try:
        return (0, float(k), k)
    except ValueError:
        return (1, 0.0, k)


def _summary_html(summary: dict[str, Any]) -> str:
    esc = html.escape
    rows = []
    for key, label in (("recipe", "recipe"), ("steps", "steps"), ("wall_seconds", "wall seconds")):
        if key in summary:
            rows.append(f"<tr><th>{esc(label)}</th><td>{esc(_fmt(summary[key]))}</td></tr>")
    for key, v in summary.items():
        if key in ("recipe", "steps", "wall_seconds", "warmup", "final"):
            continue
        if isinstance(v, (str, int, float, bool)) or v is None:
            rows.append(f"<tr><th>{esc(str(key))}</th><td>{esc(_fmt(v))}</td></tr>")
    parts = ["<h2>Summary</h2>", "<table>", *rows, "</table>"] if rows else []

    warm = summary.get("warmup") if isinstance(summary.get("warmup"), dict) else {}
    final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
    warm = {str(k): v for k, v in warm.items()}
    final = {str(k): v for k, v in final.items()}
    levels = sorted({*warm, *final}, key=_level_sort)
    if levels:
        parts += [
            "<h2>Greedy accuracy per level</h2>",
            '<table class="levels">',
            "<tr><th>level</th><th>after warm-up</th><th>final</th><th>change</th></tr>",
        ]
        for lv in levels:
            w, f = warm.get(lv), final.get(lv)
            nums = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (w, f))
            diff = f"{f - w:+.3f}" if nums else "–"
            parts.append(
                f"<tr><td>{esc(lv)}</td><td>{_acc(w)}</td><td>{_acc(f)}</td><td>{diff}</td></tr>"
            )
        parts.append("</table>")
    return "\n".join(parts)


_CSS = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.8em; text-align: left; }
table.levels td { text-align: right; }
figure { margin: 1em 0; }
img { max-width: 100%; }
pre { background: #f5f5f5; padding: 1em; overflow-x: auto; }
.note { color: #a00; }
"""


def build_report(run_dir: Path) -> Path:
    """Write PNG plots and ``report.html`` into ``run_dir``; returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")

    run_dir = Path(run_dir)
    esc = html.escape
    notes: list[str] = []

    records: list[dict[str, Any]] = []
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file():
        records = read_metrics(metrics_path)
    else:
        notes.append(f"no {METRICS_FILE} in this run directory")

    summary: dict[str, Any] = {}
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            loaded = json.loads(summary_path.read_text(encoding="utf-8"))
            summary = loaded if isinstance(loaded, dict) else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            notes.append(f"summary.json could not be read: {e}")

    plots = _make_plots(run_dir, records)

    body = [f"<h1>steerl run: {esc(run_dir.name)}</h1>"]
    body += [f'<p class="note">{esc(n)}</p>' for n in notes]
    if summary:
        body.append(_summary_html(summary))
    if plots:
        body.append("<h2>Curves</h2>")
    for name, caption in plots:
        body.append(
            f'<figure><img src="{esc(name)}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        text = config_path.read_text(encoding="utf-8", errors="replace")
        body += ["<h2>Resolved config</h2>", f"<pre>{esc(text)}</pre>"]

    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>steerl run: {esc(run_dir.name)}</title>"
        f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
