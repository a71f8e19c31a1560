"""The report echoes a pull request's own params, dvc.lock and results: hostile values stay text."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from markdown_it import MarkdownIt

from classifier.judging.compare import NOT_COMPARABLE, cannot_judge
from pipeline.report.changes import ModelHash, ParamChange, StageChange
from pipeline.report.escape import code, text
from pipeline.report.render import ClassMove, Report, render_markdown

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "x](javascript:alert(1))",
    "[click](javascript:alert(1))",
    "![pixel](https://tracker.example/p.png)",
    "a | b | c",
    "`` ` ``code` | <b>bold</b>",
    "<script>alert(1)</script>",
    "line one\n| forged | row |\nline three",
    "@octocat please merge",
    "**loud** _slanted_ ~~gone~~ \\| back",
    "`",
    "<!-- hide the rest",
]
# GitHub's flavour, as far as markdown-it has it: tables and strikethrough on top of CommonMark.
GFM = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def rendered(markdown: str) -> str:
    return GFM.render(markdown)


def visible_text(html: str) -> str:
    """The text a reader sees: tags dropped, entities decoded."""
    import html as html_module

    return html_module.unescape(re.sub(r"<[^>]+>", "", html))


@pytest.mark.parametrize("value", HOSTILE)
def test_text_and_code_render_the_value_as_it_is_and_nothing_else(value):
    flat = " ".join(value.splitlines())
    for markdown, tags in ((text(value), {"p"}), (code(value), {"p", "code"})):
        html = rendered(f"| cell |\n|---|\n| {markdown} |\n")
        found = set(re.findall(r"<(\w+)", html))
        assert found <= {"table", "thead", "tbody", "tr", "th", "td"} | tags - {"p"}, (markdown, html)
        assert html.count("<td>") == 1, (markdown, html)  # one cell: nothing split the row
        cell = re.search(r"<td>(.*?)</td>", html, re.S).group(1)
        assert visible_text(cell).strip() == flat.strip(), (markdown, html)
        # Outside a table, too (the verdict's "Why:" line, the policy sentence).
        html = rendered(f"Why: {markdown}.\n")
        assert set(re.findall(r"<(\w+)", html)) <= tags, (markdown, html)


def _report(value: str) -> Report:
    head = pd.DataFrame({"id": ["a", "b"], "actual": ["0", "1"], "predicted": ["0", "0"], "loss": [0.1, 2.0]})
    judgement = cannot_judge(head, f"the per-example results do not pair: {value}")
    judgement = type(judgement)(NOT_COMPARABLE, judgement.metrics, judgement.reason)
    change = ParamChange("params.yaml", f"train.{value}", value, {"nested": value})
    return Report(
        base_name="main", base_sha="0" * 40, head_sha="1" * 40, head_changes=[value],
        evaluation={"dataset": value, "test_fingerprint": value}, samples={"test": 2}, notes=[],
        judgement=judgement, policy=None, policy_changes=[ParamChange("params.yaml", f"compare.{value}", 1, value)],
        params=[change], params_problem=None,
        classes=[ClassMove(value, 0.5, 0.25, value)],
        stages=[StageChange(value, True, (f"params {code(value)}", f"deps {code(value)}"))],
        model_base=ModelHash("md5", value, "dvc.lock"), model_head=ModelHash("sha256", "f" * 64, "workspace"),
    )


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_in_params_or_dvc_lock_cannot_inject_markup_into_the_report(value):
    html = rendered(render_markdown(_report(value), inline_images=False))
    assert set(re.findall(r"<(\w+)", html)) <= {"h2", "h3", "p", "code", "strong", "em", "sub", "table", "thead",
                                                 "tbody", "tr", "th", "td", "blockquote"}, html
    assert "<img" not in html and "<script" not in html and "<a " not in html and "<!--" not in html, html
    # Every table row has as many cells as its header.
    for table in re.findall(r"<table>.*?</table>", html, re.S):
        widths = {len(re.findall(r"<t[hd]>", row)) for row in re.findall(r"<tr>.*?</tr>", table, re.S)}
        assert len(widths) == 1, table


def test_ordinary_values_look_as_before():
    assert code("train.epochs") == "`train.epochs`" and code("0.25") == "`0.25`"
    assert text("mnist-5k") == "mnist-5k" and text("T-shirt/top") == "T-shirt/top"


def test_a_list_param_shows_as_a_list_not_a_quoted_string():
    """`dvc params diff --json` gives model.hidden_sizes as the text "[512, 512]" (issue 40.5)."""
    report = _report("x")
    report = type(report)(**{**report.__dict__, "params": [ParamChange("params.yaml", "model.hidden_sizes",
                                                                       "[512, 512]", "[256, 128]"),
                                                           ParamChange("params.yaml", "train.optimizer", "adam", "sgd")]})
    markdown = render_markdown(report, inline_images=False)
    assert "| `model.hidden_sizes` | `[512, 512]` | `[256, 128]` |" in markdown
    assert '| `train.optimizer` | `"adam"` | `"sgd"` |' in markdown
