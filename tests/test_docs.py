"""The documentation builds without warnings and its examples run (so the docs cannot rot)."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).parent.parent / "docs"
EXAMPLES = sorted((DOCS / "examples").glob("*.py"))
GUIDES = [
    "multi-objective-training",
    "pareto-optimization",
    "curriculum-learning",
    "adaptive-curriculum",
    "custom-loss-functions",
    "loss-function-design",
    "training-stability",
    "learning-rate-scheduling",
    "hyperparameter-optimization",
    "multi-objective-tuning",
]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_docs_example_runs(example, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(example), str(tmp_path / "plot.png")])
    runpy.run_path(str(example), run_name="__main__")
    assert capsys.readouterr().out.strip()  # every example prints what it shows


def test_every_literalinclude_points_at_an_example():
    for page in (DOCS / "advanced-training").glob("*.md"):
        for line in page.read_text().splitlines():
            if line.startswith("```{literalinclude}"):
                target = (page.parent / line.split("}", 1)[1].strip()).resolve()
                assert target in [e.resolve() for e in EXAMPLES], (page.name, target)


def test_advanced_training_index_lists_the_ten_guides():
    index = (DOCS / "advanced-training" / "index.md").read_text()
    for guide in GUIDES:
        assert (DOCS / "advanced-training" / f"{guide}.md").is_file()
        assert f":link: {guide}" in index
        assert f"\n{guide}\n" in index  # in a toctree


def test_config_reference_covers_every_key():
    from steerl.config_docs import field_docs, markdown_reference

    rows = field_docs()
    assert all(r.description for r in rows), [r.key for r in rows if not r.description]
    text = markdown_reference()
    for key in ("rollout.group_size", "loss.preset", "stability.spikes", "schedule.name"):
        assert f"`{key}`" in text


def test_docs_build_with_warnings_as_errors(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    pytest.importorskip("sphinx_design")
    out = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = (out / "advanced-training" / "index.html").read_text()
    for guide in GUIDES:
        assert f'href="{guide}.html"' in index
        assert (out / "advanced-training" / f"{guide}.html").is_file()


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_advanced_training_page_renders_ten_cards_in_a_browser(tmp_path):
    """Headless Chromium opens the built index: a screenshot, and ten cards whose links work."""
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    pytest.importorskip("sphinx")
    out = tmp_path / "html"
    subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(DOCS), str(out)], check=True
    )
    page = out / "advanced-training" / "index.html"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "cards.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 10_000
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    import re

    cards = re.findall(r'<a class="[^"]*sd-stretched-link[^"]*" href="([^"]+)"', dom)
    assert len(cards) == 10, cards
    for href in cards:
        target = (page.parent / href.split("#")[0]).resolve()
        assert target.is_file(), href
    assert sorted(Path(h).stem for h in cards) == sorted(GUIDES)
