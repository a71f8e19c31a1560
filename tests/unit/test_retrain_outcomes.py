"""The retrain's outcome codes (issue 33): short, stable words for automations to match, each with its
state, and each named in docs/retraining.md's "Outcomes, states and events"; the sentences stay reasons."""

from __future__ import annotations

import re

from pipeline.retrain.flow import BLOCKED, NO_CHANGE, NOT_PROMOTED, NOTHING_RERAN, PROMOTED, SAME_MODEL, STATE_NAMES
from tests.conftest import PROJECT_ROOT


def test_each_outcome_is_a_short_code_with_its_state_and_its_line_in_the_docs():
    codes = (PROMOTED, NOT_PROMOTED, NO_CHANGE, BLOCKED)
    assert set(STATE_NAMES) == set(codes)
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", code) for code in codes)
    page = (PROJECT_ROOT / "docs" / "retraining.md").read_text(encoding="utf-8")
    section = page.split("## Outcomes, states and events", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{code}`" in section and f"`{STATE_NAMES[code]}`" in section for code in codes)
    assert NO_CHANGE not in (NOTHING_RERAN, SAME_MODEL)  # the sentences are the reasons, not the code
