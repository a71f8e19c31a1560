"""GPU tests: run on a machine with CUDA (`make test-gpu`), skipped with the reason elsewhere.

They need only the `classifier` package and what it imports (torch, numpy, pandas, pydantic,
PyYAML, Pillow), so they run on a bare GPU image with pydantic's wheels beside them; the
parts that need DVC or Prefect skip when those are missing. `make test-gpu` runs pytest with
--confcutdir=tests/gpu, so the suite's own conftest (which imports pipeline/) is not loaded.
"""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    reason = f"no CUDA device here (torch {torch.__version__}: torch.cuda.is_available() is False); run make test-gpu on a GPU machine"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
