"""Every page `dvc plots` makes draws its charts in a real browser with the network off.

Chromium is Debian's `chromium` package, driven by Playwright (its own browser builds are
downloads, which this project cannot rely on). When it is missing and apt-get can run, the
`chromium` fixture (tests/conftest.py) installs it; without apt-get the tests skip, saying so,
except under CI, where they fail. Screenshots and the console log of each page go to
test-artifacts/plots/ (git-ignored; TEST_ARTIFACTS moves it).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import OFFLINE_ARGS, PROJECT_ROOT, commit_all, dvc, write_params

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts")) / "plots"


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=OFFLINE_ARGS)
        yield browser
        browser.close()


def open_page(browser, html: Path, name: str, drawn: int, timeout_ms: int = 30_000) -> dict:
    """Load `html` from disk with every non-file request refused; wait for `drawn` charts or the timeout.

    Returns per plot div the number of drawn marks, the chart's text, and the page's console
    errors, uncaught exceptions and outside requests; saves a screenshot and the console log.
    """
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    console, errors, outside = [], [], []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: errors.append(str(error)))

    def refuse(route):
        outside.append(route.request.url)
        route.abort("internetdisconnected")

    page.route(lambda url: not url.startswith("file:"), refuse)
    page.goto(html.as_uri(), wait_until="load")
    try:
        page.wait_for_function("n => document.querySelectorAll('.vega-embed svg.marks, .vega-embed canvas').length >= n",
                               arg=drawn, timeout=timeout_ms)
    except Exception:  # noqa: BLE001 -- the assertions below say what did not draw
        pass
    charts = page.evaluate(
        """() => Object.fromEntries(Array.from(document.querySelectorAll('body > div[id]')).map(div => {
            const svg = div.querySelector('svg.marks');
            return [div.id, {data_marks: svg ? svg.querySelectorAll('g.role-mark path').length : 0,
                             canvas: div.querySelectorAll('canvas').length,
                             text: svg ? svg.textContent : ''}];
        }))"""
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
    (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(
        console + errors + [f"refused: {url}" for url in outside]
        + [f"chart {plot_id}: {chart['data_marks']} data marks, {chart['canvas']} canvas" for plot_id, chart in charts.items()]) + "\n")
    page.close()
    return {"charts": charts, "console_errors": [line for line in console if line.startswith("error:")],
            "page_errors": errors, "outside": outside}


def declared_plots() -> dict[str, list[str]]:
    """Per plot in dvc.yaml, its page element id (as DVC makes it) and the title and axis labels it must show."""
    from dvc_render.base import Renderer

    plots = {}
    for entry in yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["plots"]:
        ((name, options),) = entry.items()
        words = [options.get(key) for key in ("title", "x_label", "y_label")]
        assert all(words), f"plot {name}: dvc.yaml gives it no title, x_label or y_label"
        plots[Renderer.remove_special_chars(name)] = words
    return plots


PLOTS = declared_plots()


def assert_drew_offline(result: dict, revisions: int) -> None:
    assert result["outside"] == [], f"the page asked the network for {result['outside']}"
    assert result["page_errors"] == [] and result["console_errors"] == [], result
    assert set(result["charts"]) == set(PLOTS), result["charts"].keys()
    for plot_id, words in PLOTS.items():
        chart = result["charts"][plot_id]
        # vega draws each datum's line, bar or cell as a path inside a g.role-mark group
        assert chart["data_marks"] >= revisions or chart["canvas"], f"{plot_id} drew no data: {chart}"
        for word in words:
            assert word in chart["text"], f"{plot_id}: {word!r} missing from the chart's text {chart['text'][:300]!r}"
        assert "metrics/" not in chart["text"], f"{plot_id} is titled with a file path"
    assert result["charts"]["accuracy"]["text"].count("workspace") >= 1
    if revisions == 2:  # the legend names both revisions
        assert "HEAD" in result["charts"]["loss"]["text"]


@pytest.fixture(scope="module")
def plots_project(reproduced_template, tmp_path_factory) -> Path:
    """A copy of the project run for three epochs and committed, then a workspace whose history differs."""
    # From the session's one-epoch run: only train, evaluate and save run again.
    root = Path(shutil.copytree(reproduced_template, tmp_path_factory.mktemp("plots") / "project", symlinks=True))
    write_params(root, **{"train.epochs": 3, "save.min_accuracy": 0.5})
    dvc(root, "repro")
    commit_all(root, "three-epoch run")
    history = root / "metrics" / "history.csv"
    rows = list(csv.DictReader(io.StringIO(history.read_text())))
    for row in rows:
        row["val_loss"] = f"{float(row['val_loss']) * 1.2:.6f}"
        row["val_accuracy"] = f"{float(row['val_accuracy']) * 0.98:.6f}"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    history.write_text(out.getvalue())
    return root


def test_dvc_plots_show_draws_every_chart_with_the_network_off(plots_project, browser):
    dvc(plots_project, "plots", "show", "-o", "show")
    page = plots_project / "show" / "index.html"
    assert "cdn.jsdelivr" not in page.read_text()
    assert_drew_offline(open_page(browser, page, "plots-show", drawn=len(PLOTS)), revisions=1)


def test_dvc_plots_diff_draws_every_chart_with_the_network_off(plots_project, browser):
    dvc(plots_project, "plots", "diff", "HEAD", "-o", "diff")
    assert_drew_offline(open_page(browser, plots_project / "diff" / "index.html", "plots-diff", drawn=len(PLOTS)), revisions=2)


def test_the_browser_really_is_offline_dvcs_cdn_page_stays_blank(plots_project, browser, tmp_path):
    """The same page from DVC's default template (scripts from a CDN): nothing draws, and the requests are seen."""
    from dvc_render.html import PAGE_HTML

    template = tmp_path / "cdn.html"
    template.write_text(PAGE_HTML)
    dvc(plots_project, "plots", "show", "-o", "cdn", "--html-template", str(template))
    result = open_page(browser, plots_project / "cdn" / "index.html", "plots-cdn-default", drawn=1, timeout_ms=3_000)
    assert any("cdn.jsdelivr.net" in url for url in result["outside"]), result["outside"]
    assert all(chart["data_marks"] == 0 and chart["canvas"] == 0 for chart in result["charts"].values()), result["charts"]
