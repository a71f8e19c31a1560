"""Judging: is a model better or worse than another on the same test images, and by as much as matters?

Pure: pandas, numpy, scipy.stats; no torch, git or DVC (tests/unit/test_compare.py). No DVC stage:
the pull-request report and the retrain gate (pipeline/) call it. compare.py is the one name they import.

    compare.py        the front door: re-exports what the callers use
    tables.py         per-example results tables, read, checked and paired
    intervals.py      paired intervals of the change, one method per metric
    verdicts.py       the words of a judgement
    judgement.py      base against head, metric by metric
    gate_rule.py      the retrain gate's rule
    recipe.py         a params change judged over K training seeds
"""
